from spatialkit.suite.cli import main

raise SystemExit(main())
