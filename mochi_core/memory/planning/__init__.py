"""The memory planner: :mod:`.planner` (``plan``, the typed ``Plan``), :mod:`.phases` (the peak of each phase
for given choices), :mod:`.files` (planning for the files a user has), :mod:`.args` (the planner's argument
rules) and :mod:`.cli` (``python -m mochi_core plan``)."""
