"""Line charts as server-rendered SVG: no JavaScript library, no build step, no CDN.

Why SVG from the server: the charts are a few lines over at most SERIES_POINTS samples;
drawing them here keeps the page working offline and with scripts blocked, makes each
chart an ordinary image a test can fetch and parse, and keeps every label escaped in one
place. Colours are the Okabe-Ito palette (distinguishable with colour-vision
deficiencies) and each series also has its own dash pattern, so colour is never the only
cue; every chart carries a <title> and <desc> for screen readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4")

Series = tuple[str, Sequence[tuple[float, float]]]  # label, (unix time, value) points


def line_chart(
    title: str, unit: str, series: Sequence[Series], *, width: int = 640, height: int = 220
) -> str:
    """An accessible SVG line chart of ``series`` over time (x: seconds, y: values)."""
    left, right, top, bottom = 56, 12, 28, 28
    points = [p for _, pts in series for p in pts]
    desc = _describe(title, unit, series)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height + 20 * len(series)}" '
        f'role="img" aria-labelledby="t d" font-family="sans-serif" font-size="12">'
        f'<title id="t">{escape(title)}</title><desc id="d">{escape(desc)}</desc>'
        f'<rect width="100%" height="100%" fill="#ffffff"/>'
        f'<text x="{left}" y="18" font-weight="bold" fill="#1a1a1a">{escape(title)}</text>'
    )
    if not points:
        return head + f'<text x="{left}" y="{height / 2}" fill="#1a1a1a">no data yet</text></svg>'
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    v0, v1 = 0.0, max(p[1] for p in points) or 1.0
    span_t = (t1 - t0) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(t: float, v: float) -> tuple[float, float]:
        return left + (t - t0) / span_t * plot_w, top + plot_h - (v - v0) / (v1 - v0) * plot_h

    body = [
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#595959"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#595959"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" fill="#1a1a1a">{_fmt(v1)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" fill="#1a1a1a">0</text>',
        f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="end" fill="#1a1a1a">'
        f"{escape(unit)} over the last {_duration(span_t)}</text>",
    ]
    for i, (label, pts) in enumerate(series):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in pts))
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if len(pts) == 1:
            x, y = xy(*pts[0])
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        else:
            body.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="2"{dash_attr}/>'
            )
        ly = height + 20 * i + 4
        body.append(
            f'<line x1="{left}" y1="{ly}" x2="{left + 28}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="3"{dash_attr}/>'
            f'<text x="{left + 36}" y="{ly + 4}" fill="#1a1a1a">{escape(label)}</text>'
        )
    return head + "".join(body) + "</svg>"


def _describe(title: str, unit: str, series: Sequence[Series]) -> str:
    last = [f"{label}: {_fmt(pts[-1][1])} {unit}".strip() for label, pts in series if pts]
    return f"{title}. Latest: " + ("; ".join(last) if last else "no data") + "."


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
