"""The extension objects, created without an app and bound in the factory."""

from __future__ import annotations

from flask_bgtasks import BGTasks

bg = BGTasks()
