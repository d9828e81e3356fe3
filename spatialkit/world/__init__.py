"""The spatial-scene world: procedurally drawn scenes with ground truth, their what/where questions, and
WhereBench, the balanced benchmark built from them.

- ``scene``       sprites, scene configs, layout, rendering (pure functions of a seed)
- ``questions``   relations from geometry (margin rule, depth rule) and multiple-choice questions
- ``wherebench``  splits, balanced items, prior baselines

May import: ``spatialkit.common`` only. Imports no model code (the world is what models are measured on).
The public names of the three modules are re-exported here: ``from spatialkit import world as W``.
"""

from spatialkit.world.scene import *  # noqa: F401,F403
from spatialkit.world.questions import *  # noqa: F401,F403
from spatialkit.world.wherebench import *  # noqa: F401,F403
