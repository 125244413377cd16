from aiouring._info import main
raise SystemExit(main())
