"""An SVG timeline of one VM's snapshot tree: branches, tests and their outcomes.

Snapshots run left to right in the order they were taken; a branch (a snapshot
taken after restoring an older one) opens a new lane below. Each snapshot is a
circle coloured by the outcome of the test that took it (green passed, red
failed, grey none), labelled with its name and test; the current state has a
thick ring. Elements carry ``data-*`` attributes so tools and tests can read
the picture back.
"""

from __future__ import annotations

import time
from html import escape

from vboxlab.snapshots import SnapshotNode, SnapshotTree

COLOURS = {"passed": "#2e7d32", "failed": "#c62828", None: "#9e9e9e"}
STEP_X = 170
LANE_Y = 90
MARGIN_X = 60
TOP = 80


def _lanes(tree: SnapshotTree) -> dict[str, int]:
    """Lane of each snapshot: a first child stays in its parent's lane, others open one."""
    lanes: dict[str, int] = {}
    next_lane = 0

    def visit(node: SnapshotNode, lane: int) -> None:
        nonlocal next_lane
        lanes[node.name] = lane
        for index, child in enumerate(tree.children(node.name)):
            if index == 0:
                visit(child, lane)
            else:
                next_lane += 1
                visit(child, next_lane)

    for index, root in enumerate(tree.roots()):
        if index > 0:
            next_lane += 1
        visit(root, next_lane)
    return lanes


def render_svg(tree: SnapshotTree, vm: str, lab: str) -> str:
    """The timeline of ``tree`` as a standalone SVG document."""
    nodes = list(tree)
    order = {n.name: i for i, n in enumerate(sorted(nodes, key=lambda n: n.created))}
    lanes = _lanes(tree)
    lane_count = max(lanes.values(), default=0) + 1
    width = MARGIN_X * 2 + max(1, len(nodes)) * STEP_X
    height = TOP + lane_count * LANE_Y + 60

    def pos(name: str) -> tuple[int, int]:
        return MARGIN_X + order[name] * STEP_X + 20, TOP + lanes[name] * LANE_Y + 20

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" data-vm="{escape(vm)}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="20" y="30" font-size="18" font-weight="bold">'
        f"{escape(vm)}: snapshot timeline</text>",
        f'<text x="20" y="52" font-size="12" fill="#555">lab {escape(lab)}, '
        f"{len(nodes)} snapshots, drawn {time.strftime('%Y-%m-%d %H:%M:%S')}</text>",
    ]
    for node in nodes:
        if node.parent is not None and node.parent in order:
            (x1, y1), (x2, y2) = pos(node.parent), pos(node.name)
            middle = (x1 + x2) // 2
            out.append(f'<path class="edge" data-from="{escape(node.parent)}" '
                       f'data-to="{escape(node.name)}" d="M{x1},{y1} C{middle},{y1} {middle},{y2} '
                       f'{x2},{y2}" stroke="#607d8b" stroke-width="3" fill="none"/>')
    for node in nodes:
        x, y = pos(node.name)
        colour = COLOURS.get(node.outcome, COLOURS[None])
        ring = ' stroke="#000000" stroke-width="4"' if node.name == tree.current else \
            ' stroke="#ffffff" stroke-width="2"'
        tip = f"{node.name} ({node.kind}) {node.size} bytes" + (
            f", test {node.test}: {node.outcome}" if node.test else "")
        out.append(f'<g class="snapshot" data-name="{escape(node.name)}" '
                   f'data-parent="{escape(node.parent or "")}" data-outcome="{node.outcome or ""}" '
                   f'data-kind="{node.kind}"><title>{escape(tip)}</title>'
                   f'<circle cx="{x}" cy="{y}" r="16" fill="{colour}"{ring}/>'
                   f'<text x="{x}" y="{y + 36}" font-size="13" text-anchor="middle" '
                   f'font-weight="bold">{escape(node.name)}</text>')
        if node.test:
            short = node.test.split("::")[-1]
            out.append(f'<text x="{x}" y="{y + 52}" font-size="11" text-anchor="middle" '
                       f'fill="#444">{escape(short[:28])}</text>')
        out.append("</g>")
    legend_y = height - 24
    for index, (label, key) in enumerate((("passed", "passed"), ("failed", "failed"),
                                          ("no test", None))):
        x = 20 + index * 110
        out.append(f'<circle cx="{x}" cy="{legend_y}" r="7" fill="{COLOURS[key]}"/>'
                   f'<text x="{x + 12}" y="{legend_y + 4}" font-size="12">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
