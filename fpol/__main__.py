from fpol.cli import main

raise SystemExit(main())
