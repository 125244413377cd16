/* aiouring._hotpath: the per-callback and per-completion paths of the loop,
 * in C.
 *
 * asyncio's scheduler costs about a microsecond per callback in Python
 * (call_soon's frame, Handle.__init__, Handle._run's frame, context.run);
 * every task step, future callback and stream wake-up pays it. This module
 * keeps asyncio's semantics and moves only that arithmetic into C:
 *
 *   Handle          what call_soon returns; its fields are the attributes
 *                   asyncio's Handle has (_callback, _args, _cancelled, ...),
 *                   so asyncio's own Python methods work on it (the Python
 *                   subclass in aiouring/_scheduler.py borrows them).
 *   TimerHandleBase the same for call_at/call_later, ordered by its deadline
 *                   for the loop's heap.
 *   LoopCore        a base class of aiouring.Loop holding _ready, _closed and
 *                   _debug in C slots, with call_soon, call_at, call_later
 *                   (non-debug) and _run_ready (the run-once step's
 *                   callback loop).
 *   dispatch()      the CQE walk: user_data -> handler(res, flags).
 *   BufferTaker     a received chunk out of the provided-buffer ring as bytes,
 *                   the buffer recycled, in one call.
 *   send_nowait()   a transport's direct write: one non-blocking send(2).
 *
 * Debug mode, error reports and repr stay in Python: they are not hot, and
 * asyncio's code for them is the specification.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* Bumped when the Python side starts relying on something new here, so a
 * stale build in an editable install fails at import with a clear message. */
#define HOTPATH_ABI 5

static PyObject *str_append, *str_popleft, *str_cancelled, *str_run,
                *str_callback_failed, *str_call_soon_debug, *str_context,
                *str_fileno, *str_scheduled, *str_time, *str_call_at_debug, *str_call_later_debug;

/* heapq.heappush, for the loop's timer heap. */
static PyObject *heappush;

/* The class call_soon instantiates: aiouring._scheduler.Handle, a Python
 * subclass of HandleBase; set once by set_handle_class(). */
static PyTypeObject *handle_class, *timer_handle_class;

/* ---- Handle --------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *callback;
    PyObject *args;               /* a tuple */
    PyObject *loop;
    PyObject *context;
    PyObject *repr;               /* asyncio keeps the repr of a cancelled handle in debug mode */
    PyObject *source_traceback;
    PyObject *weakreflist;
    char cancelled;
} HandleObject;

static PyTypeObject HandleBase_Type;

static int
handle_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->callback);
    Py_VISIT(self->args);
    Py_VISIT(self->loop);
    Py_VISIT(self->context);
    Py_VISIT(self->repr);
    Py_VISIT(self->source_traceback);
    return 0;
}

static int
handle_clear(HandleObject *self)
{
    Py_CLEAR(self->callback);
    Py_CLEAR(self->args);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->context);
    Py_CLEAR(self->repr);
    Py_CLEAR(self->source_traceback);
    return 0;
}

static void
handle_dealloc(HandleObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    handle_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The exception being raised, normalized, with its traceback attached, and
 * the error indicator cleared (NULL if there is none). */
static PyObject *
take_exception(void)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* Run the callback in its context, as asyncio's Handle._run does: an
 * exception other than SystemExit/KeyboardInterrupt goes to the loop's
 * exception handler (through the Python method _callback_failed) and the
 * loop goes on. Returns -1 only for what must leave the run-once step. */
static int
handle_run(HandleObject *self)
{
    PyObject *callback = self->callback, *args = self->args, *context = self->context;
    PyObject *result = NULL;
    /* The callback may cancel its own handle, which drops these fields. */
    Py_XINCREF(callback);
    Py_XINCREF(args);
    Py_XINCREF(context);
    if (callback == NULL || args == NULL || context == NULL || !PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "Handle has no callback, args tuple or context");
    } else if (PyContext_Enter(context) == 0) {
        result = PyObject_Call(callback, args, NULL);
        if (PyContext_Exit(context) != 0)
            Py_CLEAR(result);
    }
    Py_XDECREF(callback);
    Py_XDECREF(args);
    Py_XDECREF(context);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *value = take_exception();
    if (value == NULL)
        return 0;
    PyObject *reported = PyObject_CallMethodOneArg((PyObject *)self, str_callback_failed, value);
    Py_DECREF(value);
    if (reported == NULL)
        return -1;
    Py_DECREF(reported);
    return 0;
}

static PyObject *
handle_run_method(HandleObject *self, PyObject *Py_UNUSED(ignored))
{
    if (handle_run(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef handle_methods[] = {
    {"_run", (PyCFunction)handle_run_method, METH_NOARGS, "Run the callback (asyncio.Handle._run)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef handle_members[] = {
    {"_callback", T_OBJECT, offsetof(HandleObject, callback), 0, NULL},
    {"_args", T_OBJECT, offsetof(HandleObject, args), 0, NULL},
    {"_loop", T_OBJECT, offsetof(HandleObject, loop), 0, NULL},
    {"_context", T_OBJECT, offsetof(HandleObject, context), 0, NULL},
    {"_repr", T_OBJECT, offsetof(HandleObject, repr), 0, NULL},
    {"_source_traceback", T_OBJECT, offsetof(HandleObject, source_traceback), 0, NULL},
    {"_cancelled", T_BOOL, offsetof(HandleObject, cancelled), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HandleBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiouring._hotpath.HandleBase",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C part of aiouring's callback handle.",
    .tp_traverse = (traverseproc)handle_traverse,
    .tp_clear = (inquiry)handle_clear,
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_weaklistoffset = offsetof(HandleObject, weakreflist),
    .tp_methods = handle_methods,
    .tp_members = handle_members,
    .tp_new = PyType_GenericNew,
};

/* A handle for call_soon: steals nothing, copies the positional args. */
static PyObject *
handle_new(PyTypeObject *cls, PyObject *loop, PyObject *callback, PyObject *const *args, Py_ssize_t nargs,
           PyObject *context)
{
    PyObject *arg_tuple = PyTuple_New(nargs);
    if (arg_tuple == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(arg_tuple, i, Py_NewRef(args[i]));
    if (context == NULL || context == Py_None) {
        context = PyContext_CopyCurrent();
        if (context == NULL) {
            Py_DECREF(arg_tuple);
            return NULL;
        }
    } else {
        Py_INCREF(context);
    }
    HandleObject *handle = (HandleObject *)cls->tp_alloc(cls, 0);
    if (handle == NULL) {
        Py_DECREF(arg_tuple);
        Py_DECREF(context);
        return NULL;
    }
    handle->callback = Py_NewRef(callback);
    handle->args = arg_tuple;
    handle->loop = Py_NewRef(loop);
    handle->context = context;
    handle->repr = Py_NewRef(Py_None);
    handle->source_traceback = Py_NewRef(Py_None);
    handle->cancelled = 0;
    return (PyObject *)handle;
}

/* ---- TimerHandle ---------------------------------------------------------- */

typedef struct {
    HandleObject handle;
    PyObject *when;
    char scheduled;
} TimerHandleObject;

static PyTypeObject TimerHandleBase_Type;

static int
timer_traverse(TimerHandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->when);
    return handle_traverse(&self->handle, visit, arg);
}

static int
timer_clear(TimerHandleObject *self)
{
    Py_CLEAR(self->when);
    return handle_clear(&self->handle);
}

static void
timer_dealloc(TimerHandleObject *self)
{
    Py_CLEAR(self->when);
    handle_dealloc(&self->handle);
}

static Py_hash_t
timer_hash(TimerHandleObject *self)
{
    return PyObject_Hash(self->when);
}

/* asyncio's TimerHandle order: by deadline; equal when deadline, callback,
 * args and cancelled state are. Float deadlines (loop.time() + delay, the
 * usual) compare without a call. */
static int
timer_when_cmp(PyObject *a, PyObject *b, int op)
{
    if (PyFloat_CheckExact(a) && PyFloat_CheckExact(b)) {
        double x = PyFloat_AS_DOUBLE(a), y = PyFloat_AS_DOUBLE(b);
        return op == Py_LT ? x < y : op == Py_GT ? x > y : x == y;
    }
    return PyObject_RichCompareBool(a, b, op);
}

static int
timer_equal(TimerHandleObject *a, TimerHandleObject *b)
{
    int r = timer_when_cmp(a->when, b->when, Py_EQ);
    if (r <= 0)
        return r;
    PyObject *ca = a->handle.callback ? a->handle.callback : Py_None;
    PyObject *cb = b->handle.callback ? b->handle.callback : Py_None;
    if ((r = PyObject_RichCompareBool(ca, cb, Py_EQ)) <= 0)
        return r;
    PyObject *aa = a->handle.args ? a->handle.args : Py_None;
    PyObject *ab = b->handle.args ? b->handle.args : Py_None;
    if ((r = PyObject_RichCompareBool(aa, ab, Py_EQ)) <= 0)
        return r;
    return a->handle.cancelled == b->handle.cancelled;
}

static PyObject *
timer_richcompare(PyObject *self, PyObject *other, int op)
{
    if (!PyObject_TypeCheck(other, &TimerHandleBase_Type))
        Py_RETURN_NOTIMPLEMENTED;
    TimerHandleObject *a = (TimerHandleObject *)self, *b = (TimerHandleObject *)other;
    int r;
    switch (op) {
    case Py_LT:
    case Py_GT:
        r = timer_when_cmp(a->when, b->when, op);
        break;
    case Py_LE:
    case Py_GE:
        r = timer_when_cmp(a->when, b->when, op == Py_LE ? Py_LT : Py_GT);
        if (r == 0)
            r = timer_equal(a, b);
        break;
    case Py_EQ:
        r = timer_equal(a, b);
        break;
    default:   /* Py_NE */
        r = timer_equal(a, b);
        if (r >= 0)
            r = !r;
        break;
    }
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
timer_when_method(TimerHandleObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self->when ? self->when : Py_None);
}

static PyMethodDef timer_methods[] = {
    {"when", (PyCFunction)timer_when_method, METH_NOARGS, "The scheduled time, on loop.time()'s clock."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef timer_members[] = {
    {"_when", T_OBJECT, offsetof(TimerHandleObject, when), 0, NULL},
    {"_scheduled", T_BOOL, offsetof(TimerHandleObject, scheduled), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TimerHandleBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiouring._hotpath.TimerHandleBase",
    .tp_basicsize = sizeof(TimerHandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C part of aiouring's timer handle.",
    .tp_traverse = (traverseproc)timer_traverse,
    .tp_clear = (inquiry)timer_clear,
    .tp_dealloc = (destructor)timer_dealloc,
    .tp_hash = (hashfunc)timer_hash,
    .tp_richcompare = timer_richcompare,
    .tp_methods = timer_methods,
    .tp_members = timer_members,
    .tp_base = &HandleBase_Type,
    .tp_new = PyType_GenericNew,
};

/* ---- LoopCore ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *ready;      /* collections.deque of handles */
    PyObject *closed;
    PyObject *debug;
} LoopCoreObject;

static PyObject *
loopcore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    LoopCoreObject *self = (LoopCoreObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* Closed until asyncio's __init__ says otherwise: a loop whose ring could
     * not be set up never gets there, and __del__ must see it as closed. */
    self->closed = Py_NewRef(Py_True);
    self->debug = Py_NewRef(Py_False);
    return (PyObject *)self;
}

static int
loopcore_traverse(LoopCoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ready);
    Py_VISIT(self->closed);
    Py_VISIT(self->debug);
    return 0;
}

static int
loopcore_clear(LoopCoreObject *self)
{
    Py_CLEAR(self->ready);
    Py_CLEAR(self->closed);
    Py_CLEAR(self->debug);
    return 0;
}

static void
loopcore_dealloc(LoopCoreObject *self)
{
    PyObject_GC_UnTrack(self);
    loopcore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
truth(PyObject *value)
{
    if (value == Py_False || value == NULL)
        return 0;
    if (value == Py_True)
        return 1;
    return PyObject_IsTrue(value);
}

/* The keyword arguments call_soon/call_at/call_later take: context= only.
 * Returns -1 with TypeError for anything else. */
static int
only_context_keyword(const char *method, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     PyObject **context)
{
    *context = NULL;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (name != str_context && PyUnicode_Compare(name, str_context) != 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", method, name);
            return -1;
        }
        *context = args[nargs + i];
    }
    return 0;
}

/* Debug mode is asyncio's own code (thread and callback checks, source
 * tracebacks), reached through a Python method of the same arguments.
 * Returns NULL with no error set when debug mode is off. */
static PyObject *
in_debug_mode(LoopCoreObject *self, PyObject *debug_method, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames, int *failed)
{
    int debug = truth(self->debug);
    *failed = debug < 0;
    if (debug <= 0)
        return NULL;
    PyObject *method = PyObject_GetAttr((PyObject *)self, debug_method);
    if (method == NULL) {
        *failed = 1;
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(method, args, nargs, kwnames);
    Py_DECREF(method);
    *failed = result == NULL;
    return result;
}

static int
check_open(LoopCoreObject *self)
{
    int closed = truth(self->closed);
    if (closed > 0)
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return closed ? -1 : 0;
}

/* call_soon(callback, *args, context=None), asyncio's non-debug path: a
 * closed check, a Handle, an append. */
static PyObject *
loopcore_call_soon(LoopCoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *context;
    int failed;
    if (only_context_keyword("call_soon", args, nargs, kwnames, &context) < 0)
        return NULL;
    PyObject *debug_result = in_debug_mode(self, str_call_soon_debug, args, nargs, kwnames, &failed);
    if (debug_result != NULL || failed)
        return debug_result;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_soon() missing 1 required positional argument: 'callback'");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    if (self->ready == NULL) {
        PyErr_SetString(PyExc_AttributeError, "event loop has no ready queue (not initialised)");
        return NULL;
    }
    PyObject *handle = handle_new(handle_class, (PyObject *)self, args[0], args + 1, nargs - 1, context);
    if (handle == NULL)
        return NULL;
    PyObject *appended = PyObject_CallMethodOneArg(self->ready, str_append, handle);
    if (appended == NULL) {
        Py_DECREF(handle);
        return NULL;
    }
    Py_DECREF(appended);
    return handle;
}

/* A timer on the loop's heap (asyncio's call_at after its checks). */
static PyObject *
schedule_timer(LoopCoreObject *self, PyObject *when, PyObject *const *args, Py_ssize_t nargs, PyObject *context)
{
    if (check_open(self) < 0)
        return NULL;
    PyObject *timer = handle_new(timer_handle_class, (PyObject *)self, args[0], args + 1, nargs - 1, context);
    if (timer == NULL)
        return NULL;
    ((TimerHandleObject *)timer)->when = Py_NewRef(when);
    PyObject *heap = PyObject_GetAttr((PyObject *)self, str_scheduled);
    if (heap == NULL) {
        Py_DECREF(timer);
        return NULL;
    }
    PyObject *pushed = PyObject_CallFunctionObjArgs(heappush, heap, timer, NULL);
    Py_DECREF(heap);
    if (pushed == NULL) {
        Py_DECREF(timer);
        return NULL;
    }
    Py_DECREF(pushed);
    ((TimerHandleObject *)timer)->scheduled = 1;
    return timer;
}

/* call_at(when, callback, *args, context=None) */
static PyObject *
loopcore_call_at(LoopCoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *context;
    int failed;
    if (only_context_keyword("call_at", args, nargs, kwnames, &context) < 0)
        return NULL;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_at() missing required positional arguments: 'when' and 'callback'");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "when cannot be None");
        return NULL;
    }
    PyObject *debug_result = in_debug_mode(self, str_call_at_debug, args, nargs, kwnames, &failed);
    if (debug_result != NULL || failed)
        return debug_result;
    return schedule_timer(self, args[0], args + 1, nargs - 1, context);
}

/* call_later(delay, callback, *args, context=None) */
static PyObject *
loopcore_call_later(LoopCoreObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *context;
    int failed;
    if (only_context_keyword("call_later", args, nargs, kwnames, &context) < 0)
        return NULL;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_later() missing required positional arguments: 'delay' and 'callback'");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    PyObject *debug_result = in_debug_mode(self, str_call_later_debug, args, nargs, kwnames, &failed);
    if (debug_result != NULL || failed)
        return debug_result;
    /* loop.time(), not the clock directly: subclasses and tests replace it. */
    PyObject *now = PyObject_CallMethodNoArgs((PyObject *)self, str_time);
    if (now == NULL)
        return NULL;
    PyObject *when = PyNumber_Add(now, args[0]);
    Py_DECREF(now);
    if (when == NULL)
        return NULL;
    PyObject *timer = schedule_timer(self, when, args + 1, nargs - 1, context);
    Py_DECREF(when);
    return timer;
}

/* Run the first `ntodo` handles of the ready queue, as the non-debug part of
 * asyncio's _run_once does. Handles of other classes (asyncio's TimerHandle,
 * the Handles asyncio's add_reader makes) run through their own _run. */
static PyObject *
loopcore_run_ready(LoopCoreObject *self, PyObject *arg)
{
    Py_ssize_t ntodo = PyLong_AsSsize_t(arg);
    if (ntodo == -1 && PyErr_Occurred())
        return NULL;
    PyObject *ready = self->ready;
    if (ready == NULL) {
        PyErr_SetString(PyExc_AttributeError, "event loop has no ready queue (not initialised)");
        return NULL;
    }
    Py_INCREF(ready);
    for (Py_ssize_t i = 0; i < ntodo; i++) {
        PyObject *handle = PyObject_CallMethodNoArgs(ready, str_popleft);
        if (handle == NULL)
            goto fail;
        int failed;
        if (PyObject_TypeCheck(handle, &HandleBase_Type)) {
            failed = ((HandleObject *)handle)->cancelled ? 0 : handle_run((HandleObject *)handle);
        } else {
            PyObject *cancelled = PyObject_GetAttr(handle, str_cancelled);
            int is_cancelled = cancelled == NULL ? -1 : truth(cancelled);
            Py_XDECREF(cancelled);
            failed = is_cancelled < 0;
            if (is_cancelled == 0) {
                PyObject *result = PyObject_CallMethodNoArgs(handle, str_run);
                failed = result == NULL;
                Py_XDECREF(result);
            }
        }
        Py_DECREF(handle);
        if (failed)
            goto fail;
    }
    Py_DECREF(ready);
    Py_RETURN_NONE;
fail:
    Py_DECREF(ready);
    return NULL;
}

static PyMethodDef loopcore_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loopcore_call_soon, METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None) -> Handle"},
    {"call_at", (PyCFunction)(void (*)(void))loopcore_call_at, METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"call_later", (PyCFunction)(void (*)(void))loopcore_call_later, METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"_run_ready", (PyCFunction)loopcore_run_ready, METH_O,
     "Run the first n handles of the ready queue."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef loopcore_members[] = {
    {"_ready", T_OBJECT_EX, offsetof(LoopCoreObject, ready), 0, NULL},
    {"_closed", T_OBJECT_EX, offsetof(LoopCoreObject, closed), 0, NULL},
    {"_debug", T_OBJECT_EX, offsetof(LoopCoreObject, debug), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LoopCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiouring._hotpath.LoopCore",
    .tp_basicsize = sizeof(LoopCoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C part of aiouring.Loop: the ready queue, call_soon and the callback loop.",
    .tp_traverse = (traverseproc)loopcore_traverse,
    .tp_clear = (inquiry)loopcore_clear,
    .tp_dealloc = (destructor)loopcore_dealloc,
    .tp_methods = loopcore_methods,
    .tp_members = loopcore_members,
    .tp_new = loopcore_new,
};

/* ---- the CQE walk ---------------------------------------------------------- */

/* dispatch(batch, handlers, more_flag, on_error): batch is the flat
 * [user_data, res, flags, ...] list the ring reaped. Each completion goes to
 * handlers[user_data](res, flags); the entry is removed unless the CQE says
 * more are coming (more_flag set in flags). A failing handler must not cost
 * the rest of the batch its completions: on_error(exc, handler) reports it,
 * and SystemExit/KeyboardInterrupt is raised again after the walk. */
static PyObject *
hotpath_dispatch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "dispatch(batch, handlers, more_flag, on_error)");
        return NULL;
    }
    PyObject *batch = args[0], *handlers = args[1], *on_error = args[3];
    if (!PyList_Check(batch) || !PyDict_Check(handlers)) {
        PyErr_SetString(PyExc_TypeError, "dispatch() needs a list and a dict");
        return NULL;
    }
    long more_flag = PyLong_AsLong(args[2]);
    if (more_flag == -1 && PyErr_Occurred())
        return NULL;
    PyObject *pending_exit = NULL;
    Py_INCREF(batch);
    for (Py_ssize_t i = 0; i + 2 < PyList_GET_SIZE(batch); i += 3) {
        PyObject *user_data = PyList_GET_ITEM(batch, i);
        PyObject *res = PyList_GET_ITEM(batch, i + 1);
        PyObject *flags = PyList_GET_ITEM(batch, i + 2);
        long flag_bits = PyLong_AsLong(flags);
        if (flag_bits == -1 && PyErr_Occurred())
            goto fail;
        PyObject *handler = PyDict_GetItemWithError(handlers, user_data);
        if (handler == NULL) {
            if (PyErr_Occurred())
                goto fail;
            continue;
        }
        Py_INCREF(handler);
        if (!(flag_bits & more_flag) && PyDict_DelItem(handlers, user_data) < 0) {
            Py_DECREF(handler);
            goto fail;
        }
        PyObject *call_args[2] = {res, flags};
        PyObject *result = PyObject_Vectorcall(handler, call_args, 2, NULL);
        if (result != NULL) {
            Py_DECREF(result);
            Py_DECREF(handler);
            continue;
        }
        PyObject *value = take_exception();
        if (value != NULL && (PyErr_GivenExceptionMatches(value, PyExc_SystemExit)
                              || PyErr_GivenExceptionMatches(value, PyExc_KeyboardInterrupt))) {
            Py_XSETREF(pending_exit, value);
        } else if (value != NULL) {
            PyObject *report_args[2] = {value, handler};
            PyObject *reported = PyObject_Vectorcall(on_error, report_args, 2, NULL);
            Py_DECREF(value);
            if (reported == NULL) {
                Py_DECREF(handler);
                goto fail;
            }
            Py_DECREF(reported);
        }
        Py_DECREF(handler);
    }
    Py_DECREF(batch);
    if (pending_exit != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(pending_exit), pending_exit);
        Py_DECREF(pending_exit);
        return NULL;
    }
    Py_RETURN_NONE;
fail:
    Py_DECREF(batch);
    Py_XDECREF(pending_exit);
    return NULL;
}

/* ---- receive buffers and direct sends ------------------------------------- */

/* aiou_pbuf_provide in aiouring._ring (see ring_shim.c), reached through
 * the address aiouring.ring.BufferRing.native_provide() hands out: the two
 * extensions are built separately and only ring.py may touch _ring. */
typedef int (*pbuf_provide_fn)(void *pbuf, uint16_t bid, char *addr);

/* The buffers of a provided-buffer ring are bytes objects this taker owns:
 * the kernel receives into one, and a chunk that fills at least half of it
 * becomes the bytes handed to the protocol as it is (shrunk in place, a
 * fresh one taking its place in the ring), so large receives are never
 * copied; small ones are copied out and the buffer goes straight back. */
typedef struct {
    PyObject_HEAD
    pbuf_provide_fn provide;
    void *pbuf;
    PyObject *owner;        /* the BufferRing: keeps the C state alive, explains refusals */
    Py_ssize_t entries;
    Py_ssize_t size;
    PyObject **slots;       /* slots[bid]: the bytes object buffer bid is */
} BufferTakerObject;

static PyObject *
taker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "O:BufferTaker", &owner))
        return NULL;
    PyObject *addresses = PyObject_CallMethod(owner, "native_provide", NULL);
    if (addresses == NULL)
        return NULL;
    unsigned long long provide_address, pbuf_address;
    int ok = PyArg_ParseTuple(addresses, "KK:native_provide", &provide_address, &pbuf_address);
    Py_DECREF(addresses);
    if (!ok)
        return NULL;
    PyObject *entries = PyObject_GetAttrString(owner, "entries");
    PyObject *size = entries ? PyObject_GetAttrString(owner, "buffer_size") : NULL;
    Py_ssize_t n_entries = entries ? PyLong_AsSsize_t(entries) : -1;
    Py_ssize_t n_size = size ? PyLong_AsSsize_t(size) : -1;
    Py_XDECREF(entries);
    Py_XDECREF(size);
    if (n_entries < 0 || n_size < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "BufferTaker: bad buffer ring shape");
        return NULL;
    }
    BufferTakerObject *self = (BufferTakerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->provide = (pbuf_provide_fn)(uintptr_t)provide_address;
    self->pbuf = (void *)(uintptr_t)pbuf_address;
    self->owner = Py_NewRef(owner);
    self->entries = n_entries;
    self->size = n_size;
    self->slots = PyMem_Calloc((size_t)n_entries, sizeof(PyObject *));
    if (self->slots == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t bid = 0; bid < n_entries; bid++) {
        PyObject *buffer = PyBytes_FromStringAndSize(NULL, n_size);
        if (buffer == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        self->slots[bid] = buffer;
        int rc = self->provide(self->pbuf, (uint16_t)bid, PyBytes_AS_STRING(buffer));
        if (rc != 0) {
            PyErr_Format(PyExc_OSError, "BufferTaker: the buffer ring refused buffer %zd (%d)", bid, rc);
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

static void
taker_dealloc(BufferTakerObject *self)
{
    if (self->slots != NULL) {
        /* A buffer the kernel may still receive into must not be freed: only
         * a ring that is gone (closed, or disowned after fork) answers EBADF
         * to an impossible bid; otherwise the buffers are left alive. */
        int ring_gone = self->provide(self->pbuf, UINT16_MAX, NULL) == -EBADF;
        if (ring_gone) {
            for (Py_ssize_t bid = 0; bid < self->entries; bid++)
                Py_XDECREF(self->slots[bid]);
            PyMem_Free(self->slots);
        }
        self->slots = NULL;
    }
    Py_CLEAR(self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* bid, offset and length, checked against the ring's shape. */
static int
taker_args(BufferTakerObject *self, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
           const char *usage, long *values)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = 0; i < want; i++) {
        values[i] = PyLong_AsLong(args[i]);
        if (values[i] == -1 && PyErr_Occurred())
            return -1;
    }
    long bid = values[0], offset = want == 3 ? values[1] : 0, length = want >= 2 ? values[want - 1] : 0;
    if (bid < 0 || bid >= self->entries || offset < 0 || length < 0
            || offset > self->size || length > self->size - offset) {
        PyErr_Format(PyExc_ValueError, "bytes %ld..%ld of buffer %ld are not in this buffer ring",
                     offset, offset + length, bid);
        return -1;
    }
    if (self->slots == NULL || self->slots[bid] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "buffer ring is closed");
        return -1;
    }
    return 0;
}

static int
taker_give_back(BufferTakerObject *self, long bid)
{
    int rc = self->provide(self->pbuf, (uint16_t)bid, PyBytes_AS_STRING(self->slots[bid]));
    if (rc == 0)
        return 0;
    /* taker_args checked the bid: the ring is closed, or refuses on its own. */
    PyObject *closed = PyObject_GetAttrString(self->owner, "_closed");
    int is_closed = closed == NULL ? -1 : PyObject_IsTrue(closed);
    Py_XDECREF(closed);
    if (is_closed > 0)
        PyErr_SetString(PyExc_RuntimeError, "buffer ring is closed");
    else if (is_closed == 0)
        PyErr_Format(PyExc_OSError, "buffer ring refused buffer %ld (%d)", bid, rc);
    return -1;
}

/* take(bid, length) -> bytes: the chunk a receive CQE names, as bytes; the
 * buffer (or its replacement) goes back to the kernel. */
static PyObject *
taker_take(BufferTakerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long v[2];
    if (taker_args(self, args, nargs, 2, "take(bid, length)", v) < 0)
        return NULL;
    long bid = v[0], length = v[1];
    PyObject *data;
    if (2 * length >= self->size) {
        PyObject *fresh = PyBytes_FromStringAndSize(NULL, self->size);
        if (fresh == NULL) {
            taker_give_back(self, bid);    /* the data is lost, the buffer is not */
            return NULL;
        }
        data = self->slots[bid];
        self->slots[bid] = fresh;
        /* Only we hold `data`: shrinking it is a realloc in place. */
        if (_PyBytes_Resize(&data, length) < 0) {
            taker_give_back(self, bid);
            return NULL;
        }
    } else {
        data = PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->slots[bid]), length);
        if (data == NULL) {
            taker_give_back(self, bid);
            return NULL;
        }
    }
    if (taker_give_back(self, bid) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

/* A protocol's buffer, writable; a read-only one is the TypeError that
 * recv_into() raises for it. */
static int
get_writable(PyObject *dst, Py_buffer *view)
{
    if (PyObject_GetBuffer(dst, view, PyBUF_WRITABLE) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "get_buffer() returned a read-only %.100s", Py_TYPE(dst)->tp_name);
    }
    return -1;
}

/* copy_into(bid, offset, length, dst) -> int: as much of bytes
 * [offset, offset + length) of buffer bid as fits into the writable buffer
 * dst (a BufferedProtocol's), without giving the buffer back. No export of
 * dst outlives the call: the protocol may resize it in buffer_updated(). */
static PyObject *
taker_copy_into(BufferTakerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long v[3];
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "copy_into(bid, offset, length, dst)");
        return NULL;
    }
    if (taker_args(self, args, 3, 3, "copy_into(bid, offset, length, dst)", v) < 0)
        return NULL;
    Py_buffer view;
    if (get_writable(args[3], &view) < 0)
        return NULL;
    long n = v[2] < view.len ? v[2] : (long)view.len;
    memcpy(view.buf, PyBytes_AS_STRING(self->slots[v[0]]) + v[1], (size_t)n);
    PyBuffer_Release(&view);
    return PyLong_FromLong(n);
}

/* copy_out(bid, offset, length) -> bytes, without giving the buffer back. */
static PyObject *
taker_copy_out(BufferTakerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long v[3];
    if (taker_args(self, args, nargs, 3, "copy_out(bid, offset, length)", v) < 0)
        return NULL;
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->slots[v[0]]) + v[1], v[2]);
}

/* recycle(bid): hand buffer bid back to the kernel. */
static PyObject *
taker_recycle(BufferTakerObject *self, PyObject *bid)
{
    long v[1];
    if (taker_args(self, &bid, 1, 1, "recycle(bid)", v) < 0)
        return NULL;
    if (taker_give_back(self, v[0]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef taker_methods[] = {
    {"take", (PyCFunction)(void (*)(void))taker_take, METH_FASTCALL,
     "take(bid, length) -> bytes: a received chunk as bytes; the buffer goes back to the kernel."},
    {"copy_into", (PyCFunction)(void (*)(void))taker_copy_into, METH_FASTCALL,
     "copy_into(bid, offset, length, dst) -> int: copy part of a buffer into dst."},
    {"copy_out", (PyCFunction)(void (*)(void))taker_copy_out, METH_FASTCALL,
     "copy_out(bid, offset, length) -> bytes: copy part of a buffer out."},
    {"recycle", (PyCFunction)taker_recycle, METH_O, "recycle(bid): give the buffer back."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BufferTaker_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiouring._hotpath.BufferTaker",
    .tp_basicsize = sizeof(BufferTakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BufferTaker(buffer_ring): owns the buffers of a provide=False buffer ring.",
    .tp_dealloc = (destructor)taker_dealloc,
    .tp_methods = taker_methods,
    .tp_new = taker_new,
};

/* copy_into(src, offset, length, dst) -> int: as much of src[offset:offset +
 * length] as fits into the writable buffer dst; held data on its way into a
 * BufferedProtocol. */
static PyObject *
hotpath_copy_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "copy_into(src, offset, length, dst)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    Py_ssize_t length = PyLong_AsSsize_t(args[2]);
    if ((offset == -1 || length == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer src, dst;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (offset < 0 || length < 0 || offset > src.len || length > src.len - offset) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "copy_into(): offset and length must lie within src");
        return NULL;
    }
    if (get_writable(args[3], &dst) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_ssize_t n = length < dst.len ? length : dst.len;
    memcpy(dst.buf, (char *)src.buf + offset, (size_t)n);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return PyLong_FromSsize_t(n);
}

/* send_nowait(sock, data) -> int: one send(2) that never blocks and never
 * raises SIGPIPE. Returns the count sent, 0 when the socket buffer is full;
 * other errors raise the OSError subclass socket.send would. The fd is read
 * from the socket each time, so a closed socket gives EBADF, never a
 * reused fd. */
static PyObject *
hotpath_send_nowait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send_nowait(sock, data)");
        return NULL;
    }
    PyObject *fileno = PyObject_CallMethodNoArgs(args[0], str_fileno);
    if (fileno == NULL)
        return NULL;
    long fd = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        errno = EBADF;     /* a closed socket, as socket.send reports it */
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    ssize_t sent;
    for (;;) {
        sent = send((int)fd, view.buf, (size_t)view.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent >= 0)
            break;
        if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                goto fail;
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            sent = 0;
            break;
        }
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(sent);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
hotpath_set_handle_classes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(args[0]) || !PyType_Check(args[1])
            || !PyType_IsSubtype((PyTypeObject *)args[0], &HandleBase_Type)
            || !PyType_IsSubtype((PyTypeObject *)args[1], &TimerHandleBase_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "set_handle_classes() needs subclasses of HandleBase and TimerHandleBase");
        return NULL;
    }
    Py_XSETREF(handle_class, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(timer_handle_class, (PyTypeObject *)Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"dispatch", (PyCFunction)(void (*)(void))hotpath_dispatch, METH_FASTCALL,
     "dispatch(batch, handlers, more_flag, on_error): hand each CQE to its handler."},
    {"copy_into", (PyCFunction)(void (*)(void))hotpath_copy_into, METH_FASTCALL,
     "copy_into(src, offset, length, dst) -> int: copy part of src into a writable buffer."},
    {"send_nowait", (PyCFunction)(void (*)(void))hotpath_send_nowait, METH_FASTCALL,
     "send_nowait(sock, data) -> int: one non-blocking send(2); 0 when the socket is full."},
    {"set_handle_classes", (PyCFunction)(void (*)(void))hotpath_set_handle_classes, METH_FASTCALL,
     "set_handle_classes(handle, timer_handle): the classes call_soon and call_at create."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT, "aiouring._hotpath",
    "The loop's per-callback and per-completion paths in C.", -1, module_methods,
};

#define INTERN(var, text) \
    do { if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL; } while (0)

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    INTERN(str_append, "append");
    INTERN(str_popleft, "popleft");
    INTERN(str_cancelled, "_cancelled");
    INTERN(str_run, "_run");
    INTERN(str_callback_failed, "_callback_failed");
    INTERN(str_call_soon_debug, "_call_soon_debug");
    INTERN(str_context, "context");
    INTERN(str_fileno, "fileno");
    INTERN(str_scheduled, "_scheduled");
    INTERN(str_time, "time");
    INTERN(str_call_at_debug, "_call_at_debug");
    INTERN(str_call_later_debug, "_call_later_debug");
    PyObject *heapq = PyImport_ImportModule("heapq");
    if (heapq == NULL)
        return NULL;
    heappush = PyObject_GetAttrString(heapq, "heappush");
    Py_DECREF(heapq);
    if (heappush == NULL)
        return NULL;
    if (PyType_Ready(&HandleBase_Type) < 0 || PyType_Ready(&TimerHandleBase_Type) < 0
            || PyType_Ready(&LoopCore_Type) < 0 || PyType_Ready(&BufferTaker_Type) < 0)
        return NULL;
    handle_class = (PyTypeObject *)Py_NewRef(&HandleBase_Type);
    timer_handle_class = (PyTypeObject *)Py_NewRef(&TimerHandleBase_Type);
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "HandleBase", (PyObject *)&HandleBase_Type) < 0
            || PyModule_AddObjectRef(module, "TimerHandleBase", (PyObject *)&TimerHandleBase_Type) < 0
            || PyModule_AddObjectRef(module, "LoopCore", (PyObject *)&LoopCore_Type) < 0
            || PyModule_AddObjectRef(module, "BufferTaker", (PyObject *)&BufferTaker_Type) < 0
            || PyModule_AddIntConstant(module, "ABI", HOTPATH_ABI) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
