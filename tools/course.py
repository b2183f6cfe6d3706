"""course.toml, the one list of the course's lessons, read in one place: `make course` (run_course.py), the README's
course map (course_map.py) and the static site (build_site.py) all take the lessons from here."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "course.toml"
PARTS = ("path", "in practice", "solutions")  # in the order the map and the site show them


@dataclass(frozen=True)
class Lesson:
    notebook: str  # as course.toml writes it: relative to the repository, e.g. "notebooks/01_lora_from_scratch.ipynb"
    title: str
    part: str
    needs: tuple[str, ...] = ()  # notebooks (as written in course.toml) that must run first; ("*",): all the others
    folder: Path = ROOT  # the folder course.toml lies in, which `notebook` is relative to

    @property
    def path(self) -> Path:
        return self.folder / self.notebook

    @property
    def name(self) -> str:
        """The short name the map and the site show: the notebook's file name without ``.ipynb``."""
        return Path(self.notebook).stem


def load_lessons(course: Path = COURSE) -> list[Lesson]:
    """The lessons in course.toml's order, each checked: a known part, a unique notebook, needs that name lessons."""
    entries = tomllib.loads(course.read_text(encoding="utf-8")).get("lesson", [])
    lessons: list[Lesson] = []
    for number, entry in enumerate(entries, 1):
        unknown = set(entry) - {"notebook", "title", "part", "needs"}
        if unknown or "notebook" not in entry or "title" not in entry:
            raise SystemExit(f"{course.name}: lesson {number} needs `notebook` and `title`"
                             + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
        part = entry.get("part", "path")
        if part not in PARTS:
            raise SystemExit(f"{course.name}: {entry['notebook']}: part {part!r} is not one of {', '.join(PARTS)}")
        needs = entry.get("needs", ())
        needs = (needs,) if isinstance(needs, str) else tuple(needs)
        lessons.append(Lesson(entry["notebook"], entry["title"], part, needs, course.resolve().parent))
    listed = [lesson.notebook for lesson in lessons]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if twice:
        raise SystemExit(f"{course.name} lists {', '.join(twice)} more than once")
    for lesson in lessons:
        strangers = [need for need in lesson.needs if need != "*" and need not in listed]
        if strangers:
            raise SystemExit(f"{course.name}: {lesson.notebook} needs {', '.join(strangers)}, which it does not list")
    return lessons


def missing_notebooks(lessons: list[Lesson]) -> list[Lesson]:
    """The lessons course.toml lists whose notebook does not exist (yet)."""
    return [lesson for lesson in lessons if not lesson.path.is_file()]
