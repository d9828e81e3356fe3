"""``python -m spatialkit.models.organism --preset quick --threads 1 --overrides '{"seed": 1}'``: train an organism
into the checkpoint store (see ``spatialkit.models.organism.store.main``)."""

from spatialkit.models.organism.store import main

raise SystemExit(main())
