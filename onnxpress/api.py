from __future__ import annotations
OptimizeResult = check = inspect = optimize = None
