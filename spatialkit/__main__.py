from spatialkit.cli import main

raise SystemExit(main())
