"""A topology drawn as SVG: segments as switches, nodes with their addresses, links labelled.

Segments sit on one row; each node is drawn above or below the segment it
joins (a router, on several segments, between them above the row); a link
between two nodes is a straight line. Every link carries its impairments
(``delay 30ms, loss 1%``; both directions when they differ). Elements carry
``data-*`` attributes (``data-node``, ``data-segment``, ``data-link``) so tests
and tools can read the picture back.
"""

from __future__ import annotations

from html import escape

from vboxlab.net.topology import Impairment, Topology, describe_impairment

SEGMENT_GAP = 300
NODE_GAP = 150
ROUTERS, TOP, ROW, BOTTOM = 50, 140, 300, 460
NODE_W, NODE_H = 130, 46
CHAR_W = 6.5  # width of a label character at 11 px, roughly
PROVIDER_COLOURS = {"qemu": "#1565c0", "netns": "#6a1b9a"}
LiveLinks = dict[tuple[str, str], tuple[Impairment, Impairment]]


def _label(a_to_b: Impairment, b_to_a: Impairment, a: str, b: str) -> list[str]:
    """The link's impairments: one line, or one per direction when they differ."""
    forward, backward = describe_impairment(a_to_b), describe_impairment(b_to_a)
    if forward == backward:
        return [] if forward == "clean" else [forward]
    return [f"{a}->{b}: {forward}", f"{b}->{a}: {backward}"]


def _positions(topology: Topology) -> tuple[dict[str, tuple[float, float]],
                                             dict[str, tuple[float, float]]]:
    """Centres of the drawn segments and of the nodes."""
    drawn = list(topology.spec.segments)
    nodes_of: dict[str, list[str]] = {}
    for iface in topology.interfaces:
        nodes_of.setdefault(iface.node, []).append(iface.segment)
    per_segment: dict[str, list[str]] = {s: [] for s in drawn}
    routers, pairs = [], []
    for node in topology.nodes:
        mine = [s for s in dict.fromkeys(nodes_of.get(node, [])) if s in per_segment]
        if len(mine) == 1:
            per_segment[mine[0]].append(node)
        elif len(mine) > 1:
            routers.append((node, mine))
        else:
            pairs.append(node)  # only node-to-node links, or none
    widths = {s: max(1, (len(per_segment[s]) + 1) // 2) * NODE_GAP for s in drawn}
    trunk_text = {s: 0.0 for s in drawn}  # room a trunk's label needs after its segment
    for link in topology.links:
        if link.a in trunk_text and link.b in trunk_text:
            lines = _label(link.a_to_b, link.b_to_a, link.a, link.b)
            room = CHAR_W * max(map(len, lines), default=0)
            first = link.a if drawn.index(link.a) < drawn.index(link.b) else link.b
            trunk_text[first] = max(trunk_text[first], room)
    segments: dict[str, tuple[float, float]] = {}
    x = 100.0
    for name in drawn:
        x = max(x, 100.0) + widths[name] / 2
        segments[name] = (x, ROW)
        x += widths[name] / 2 + max(SEGMENT_GAP - NODE_GAP, trunk_text[name] - 60)
    nodes: dict[str, tuple[float, float]] = {}
    for name, members in per_segment.items():
        cx = segments[name][0]
        above = members[0::2]
        below = members[1::2]
        for row, y in ((above, TOP), (below, BOTTOM)):
            for k, node in enumerate(row):
                nodes[node] = (cx + (k - (len(row) - 1) / 2) * NODE_GAP, y)
    for k, (node, mine) in enumerate(routers):
        xs = [segments[s][0] for s in mine]
        nodes[node] = (sum(xs) / len(xs) + (k % 2) * NODE_W / 2, ROUTERS)
    x = max((p[0] for p in [*segments.values(), *nodes.values()]), default=0) + NODE_GAP
    for k, node in enumerate(pairs):
        nodes[node] = (x + (k // 2) * NODE_GAP, TOP if k % 2 == 0 else BOTTOM)
    top = min((p[1] for p in [*segments.values(), *nodes.values()]), default=ROUTERS)
    shift = top - ROUTERS  # no routers: the picture starts at its first row
    return ({n: (px, py - shift) for n, (px, py) in segments.items()},
            {n: (px, py - shift) for n, (px, py) in nodes.items()})


def render_topology_svg(topology: Topology, live: LiveLinks | None = None) -> str:
    """The topology as a standalone SVG document.

    ``live`` gives links' current properties ((a, b) -> (a to b, b to a)), as a
    running lab has them after changes; links it lacks are drawn as written.
    """
    segments, nodes = _positions(topology)
    addresses: dict[str, list[str]] = {}
    for iface in topology.interfaces:
        addresses.setdefault(iface.node, []).append(f"{iface.address}")
    everything = [*segments.values(), *nodes.values()] or [(0.0, 0.0)]
    now = {(link.a, link.b): (live or {}).get((link.a, link.b), (link.a_to_b, link.b_to_a))
           for link in topology.links}
    labels = {pair: _label(*now[pair], *pair) for pair in now}

    def centre(name: str) -> tuple[float, float]:
        return segments[name] if name in segments else nodes[name]

    label_right = max((max(centre(a)[0], centre(b)[0]) + CHAR_W * max(map(len, lines))
                       for (a, b), lines in labels.items() if lines), default=0)
    width = int(max(max(p[0] for p in everything) + NODE_W, label_right + 20))
    height = int(max(p[1] for p in everything) + NODE_H + 40)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" data-topology="{escape(topology.name)}" '
           'font-family="sans-serif" font-size="12">',
           f'<title>topology {escape(topology.name)}</title>',
           '<rect width="100%" height="100%" fill="#ffffff"/>']
    for link in topology.links:
        (x1, y1), (x2, y2) = centre(link.a), centre(link.b)
        lines = labels[(link.a, link.b)]
        forward, backward = now[(link.a, link.b)]
        colour = "#c62828" if not (forward.up and backward.up) else (
            "#ef6c00" if lines else "#546e7a")
        out.append(f'<g data-link="{escape(link.a)}--{escape(link.b)}" '
                   f'data-impairment="{escape("; ".join(lines) or "clean")}">'
                   f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
                   f'stroke="{colour}" stroke-width="{3 if lines else 2}"/>')
        flat = y1 == y2  # a trunk: the label goes under the line, centred
        mx, my = (x1 + x2) / 2 + (0 if flat else 8), (y1 + y2) / 2 + (30 if flat else 0)
        for index, line in enumerate(lines):
            out.append(f'<text x="{mx:.0f}" y="{my + 14 * index:.0f}" fill="{colour}" '
                       f'font-size="11" text-anchor="{"middle" if flat else "start"}" '
                       'stroke="#ffffff" stroke-width="3" '
                       f'paint-order="stroke">{escape(line)}</text>')
        out.append("</g>")
    for name, (x, y) in segments.items():
        subnet = topology.segments.get(name)
        out.append(f'<g data-segment="{escape(name)}">'
                   f'<rect x="{x - 70:.0f}" y="{y - 16:.0f}" width="140" height="32" rx="6" '
                   'fill="#eceff1" stroke="#37474f"/>'
                   f'<text x="{x:.0f}" y="{y - 2:.0f}" text-anchor="middle" '
                   f'font-weight="bold">{escape(name)}</text>'
                   f'<text x="{x:.0f}" y="{y + 11:.0f}" text-anchor="middle" font-size="10">'
                   f'{escape(str(subnet) if subnet else "")}</text></g>')
    for name, (x, y) in nodes.items():
        node = topology.nodes[name]
        colour = PROVIDER_COLOURS.get(node.provider, "#2e7d32")
        kind = "netns" if node.provider == "netns" else f"{node.provider} {node.template}"
        listed = ", ".join(addresses.get(name, []))
        out.append(f'<g data-node="{escape(name)}" data-provider="{escape(node.provider)}">'
                   f'<rect x="{x - NODE_W / 2:.0f}" y="{y - NODE_H / 2:.0f}" width="{NODE_W}" '
                   f'height="{NODE_H}" rx="8" fill="#ffffff" stroke="{colour}" '
                   'stroke-width="2"/>'
                   f'<text x="{x:.0f}" y="{y - 6:.0f}" text-anchor="middle" font-weight="bold" '
                   f'fill="{colour}">{escape(name)}</text>'
                   f'<text x="{x:.0f}" y="{y + 8:.0f}" text-anchor="middle" font-size="10">'
                   f'{escape(kind)}</text>'
                   f'<text x="{x:.0f}" y="{y + 19:.0f}" text-anchor="middle" font-size="9" '
                   f'fill="#455a64">{escape(listed)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)
