"""Draw the life of a lock name (docs/lifecycle.png): `python scripts/lifecycle.py [OUT]`.

The picture is generated, not drawn by hand, so that a change of the election
rules is a change of this file, reviewed beside the code. Needs matplotlib
(the ``bench`` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "lifecycle.png"

#: state -> (x, y, fill colour, subtitle)
STATES = {
    "standby": (1.6, 4.0, "#dbe9f6", "reads the lease every\ncheck interval"),
    "master": (6.2, 4.0, "#d5f0d5", "start(ctx) runs;\nrenews every heartbeat"),
    "stepping down": (
        10.8,
        4.0,
        "#fbe6c8",
        "is_master() false, stopping set,\nstop(ctx), bounded join",
    ),
    "released": (14.6, 6.6, "#eeeeee", "lease row has no holder"),
    "expired": (14.6, 1.4, "#f6d5d5", "lease row names a silent holder"),
    "disabled": (1.6, 8.0, "#e4dcf2", "enabled = false in SQL;\nno worker acquires"),
}
BOX_W, BOX_H = 3.2, 1.5
INPUT = "#c05a00"  # hints and operator commands: where they enter


def box(ax: plt.Axes, name: str) -> None:
    x, y, colour, subtitle = STATES[name]
    ax.add_patch(
        FancyBboxPatch(
            (x - BOX_W / 2, y - BOX_H / 2),
            BOX_W,
            BOX_H,
            boxstyle="round,pad=0.05,rounding_size=0.25",
            fc=colour,
            ec="#333333",
            lw=1.2,
        )
    )
    ax.text(x, y + 0.32, name, ha="center", va="center", fontsize=12, weight="bold")
    ax.text(x, y - 0.28, subtitle, ha="center", va="center", fontsize=8)


def arrow(
    ax: plt.Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str,
    at: tuple[float, float],
    rad: float = 0.0,
    colour: str = "#333333",
    style: str = "-",
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            connectionstyle=f"arc3,rad={rad}",
            color=colour,
            lw=1.3,
            linestyle=style,
        )
    )
    ax.text(*at, label, ha="center", va="center", fontsize=8, color=colour, linespacing=1.25)


def edge(name: str, side: str, shift: float = 0.0) -> tuple[float, float]:
    """A point on the border of a state's box: side is n, s, e or w."""
    x, y = STATES[name][:2]
    return {
        "n": (x + shift, y + BOX_H / 2),
        "s": (x + shift, y - BOX_H / 2),
        "e": (x + BOX_W / 2, y + shift),
        "w": (x - BOX_W / 2, y + shift),
    }[side]


def draw(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(13, 7.2))
    ax.set_xlim(-0.4, 16.6)
    ax.set_ylim(-0.6, 9.4)
    ax.axis("off")
    for name in STATES:
        box(ax, name)

    arrow(
        ax,
        edge("standby", "e", 0.3),
        edge("master", "w", 0.3),
        "acquire: one compare-and-set,\nepoch + 1\nfree lease: at once",
        (3.9, 5.25),
    )
    arrow(
        ax,
        edge("master", "n", 0.9),
        edge("master", "n", 1.4),
        "renew every\nheartbeat interval",
        (8.3, 5.45),
        rad=-2.2,
    )
    arrow(
        ax,
        edge("master", "e"),
        edge("stepping down", "w"),
        "release, disable: a flag in SQL,\nseen at the next renewal or hint\n"
        "SIGTERM (worker_shutting_down)\nstart() raised\n"
        "renewals failing: self-stop after\nheartbeat x retries",
        (8.5, 2.55),
        colour=INPUT,
    )
    arrow(
        ax,
        edge("stepping down", "n", 0.8),
        edge("released", "w"),
        "stop() returned:\nlease freed in SQL\n+ hint broadcast",
        (11.3, 6.9),
        rad=-0.25,
    )
    arrow(
        ax,
        edge("stepping down", "s", 0.8),
        edge("expired", "w", 0.3),
        "database unreachable:\nthe lease cannot be freed",
        (13.5, 3.1),
        rad=0.25,
    )
    arrow(
        ax,
        edge("master", "s", -0.3),
        edge("expired", "w", -0.3),
        "process killed\nor paused:\nno renewal",
        (5.5, 2.0),
        rad=0.3,
    )
    arrow(
        ax,
        edge("released", "n", -0.6),
        edge("standby", "n", 1.0),
        "hint: every standby reads at once;\nthe first compare-and-set wins",
        (8.6, 7.55),
        rad=0.15,
        colour=INPUT,
    )
    arrow(
        ax,
        edge("expired", "s", -0.6),
        edge("standby", "s", 0.4),
        "a standby saw (epoch, renewals, token) unchanged for a full ttl\n"
        "on its own monotonic clock, then takes over (crash failover <= ttl + check interval)",
        (7.6, -0.35),
        rad=-0.18,
    )
    arrow(
        ax,
        edge("standby", "n", -0.7),
        edge("disabled", "s", -0.7),
        "disable",
        (0.35, 6.0),
        colour=INPUT,
    )
    arrow(
        ax,
        edge("disabled", "s", 0.1),
        edge("standby", "n", 0.1),
        "enable\n(+ hint)",
        (2.25, 6.0),
        colour=INPUT,
        style="--",
    )
    ax.text(
        4.2,
        9.15,
        "black: the election's own steps   orange: where hints and operator commands "
        "(celery master / mastercontrol) enter",
        fontsize=8,
        color="#555555",
    )
    ax.set_title("The life of a lock name, seen from one worker", fontsize=14)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
