from silentwatch.cli import main

raise SystemExit(main())
