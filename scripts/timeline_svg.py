#!/usr/bin/env python3
"""Draws a window of a `dagr train --timeline` file as an SVG picture (no plotting library needed).

Usage: scripts/timeline_svg.py TRACE.json OUT.svg [FIRST_STEP=10] [STEPS=3]
The window runs from the start of rank 0's FIRST_STEP-th "step" span (counted
from 0) to the end of the STEPS-th after it. Per rank: the training track, one
row per nesting depth, and the communication track; flow arrows join the ends
of each collective.
"""
import collections
import html
import json
import sys

COLORS = {"step": "#d9d9d9", "forward": "#8dd3c7", "backward": "#fdb462", "optimizer step": "#bebada",
          "wait for communication": "#fb8072", "comm hook run": "#ffffb3"}
ROW, GAP, LEFT, WIDTH = 18, 10, 150, 1100


def main():
    path, out = sys.argv[1], sys.argv[2]
    first = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    events = json.load(open(path))["traceEvents"]
    spans = [e for e in events if e.get("ph") == "X"]
    steps = sorted((e for e in spans if e["pid"] == 0 and e["name"] == "step"), key=lambda e: e["ts"])
    t0 = steps[first]["ts"]
    t1 = steps[first + count - 1]["ts"] + steps[first + count - 1]["dur"]
    scale = WIDTH / (t1 - t0)
    x = lambda t: LEFT + (min(max(t, t0), t1) - t0) * scale

    rows, y, svg = {}, 30, []
    for pid in sorted({e["pid"] for e in spans}):
        svg.append(f'<text x="4" y="{y + 12}" font-weight="bold">rank {pid}</text>')
        # Training track: depth of each span by nesting (sorted by start, longest first).
        training = sorted((e for e in spans if e["pid"] == pid and e["tid"] == 0), key=lambda e: (e["ts"], -e["dur"]))
        stack, depth = [], {}
        for e in training:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            depth[id(e)] = len(stack)
            stack.append(e)
        levels = max(depth.values(), default=0) + 1
        svg.append(f'<text x="60" y="{y + 12}">training</text>')
        for e in training:
            if e["ts"] + e["dur"] >= t0 and e["ts"] <= t1:
                draw(svg, e, x, y + depth[id(e)] * ROW, COLORS.get(e["name"], "#cccccc"))
        y += levels * ROW
        svg.append(f'<text x="60" y="{y + 12}">communication</text>')
        for e in spans:
            if e["pid"] == pid and e["tid"] == 1 and e["ts"] + e["dur"] >= t0 and e["ts"] <= t1:
                draw(svg, e, x, y, "#80b1d3")
                rows[(pid, e["ts"])] = y
        rows[pid] = y
        y += ROW + GAP

    flows = collections.defaultdict(dict)
    for e in events:
        if e.get("ph") in ("s", "f") and t0 <= e["ts"] <= t1:
            flows[e["id"]][e["ph"]] = e
    for pair in flows.values():
        if len(pair) == 2:
            a, b = pair["s"], pair["f"]
            svg.append(f'<line x1="{x(a["ts"]):.1f}" y1="{rows[a["pid"]] + ROW / 2}" x2="{x(b["ts"]):.1f}" '
                       f'y2="{rows[b["pid"]] + ROW / 2}" stroke="#333" marker-end="url(#arrow)"/>')
    for k in range(6):  # time axis in ms from the window's start
        t = t0 + k * (t1 - t0) / 5
        svg.append(f'<line x1="{x(t):.1f}" y1="{y}" x2="{x(t):.1f}" y2="{y + 5}" stroke="black"/>')
        svg.append(f'<text x="{x(t):.1f}" y="{y + 18}" text-anchor="middle">{(t - t0) / 1000:.2f} ms</text>')
    height = y + 30
    with open(out, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT + WIDTH + 20}" height="{height}" '
                f'font-family="sans-serif" font-size="11">\n<defs><marker id="arrow" markerWidth="6" markerHeight="6" '
                f'refX="5" refY="3" orient="auto"><path d="M0,0 L6,3 L0,6 z"/></marker></defs>\n'
                f'<rect width="100%" height="100%" fill="white"/>\n'
                f'<text x="4" y="16">{html.escape(path.split("/")[-1])}: steps {first}..{first + count - 1} of rank 0</text>\n')
        f.write("\n".join(svg))
        f.write("\n</svg>\n")


def draw(svg, e, x, y, color):
    a, b = x(e["ts"]), x(e["ts"] + e["dur"])
    svg.append(f'<rect x="{a:.1f}" y="{y}" width="{max(b - a, 0.5):.1f}" height="{ROW - 2}" fill="{color}" '
               f'stroke="#555" stroke-width="0.3"><title>{html.escape(e["name"])} {e["dur"]:.1f} µs</title></rect>')
    if b - a > 7 * len(e["name"]):
        svg.append(f'<text x="{a + 2:.1f}" y="{y + 12}">{html.escape(e["name"])}</text>')


main()
