"""A small live line plot for training curves, drawn with ``QPainter``.

The fine-tune panel needs two curves that grow by one point per optimiser step: the training
loss, and validation scores with different units (re-blur PSNR in dB, a sharpness ratio near 1).
A plotting library would be heavier than the job (matplotlib is an optional extra, and pyqtgraph
is not a dependency), so this widget keeps its points in plain lists and repaints on change.
Two y axes (left and right) let one plot show quantities with different units; the left axis
can be logarithmic for losses that fall over decades.

The data side (:class:`PlotSeries`, :func:`nice_range`, :func:`nice_ticks`) is plain Python,
so it can be tested without painting.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

logger = logging.getLogger(__name__)

__all__ = ["LinePlot", "PlotSeries", "format_ticks", "nice_range", "nice_ticks",
           "reference_label_y"]

_STYLES = {"solid": Qt.PenStyle.SolidLine, "dash": Qt.PenStyle.DashLine,
           "dot": Qt.PenStyle.DotLine}


@dataclass
class PlotSeries:
    """One curve.

    Attributes
    ----------
    name : str
        Key used by :meth:`LinePlot.append` and shown in the legend.
    color : str
        Any colour ``QColor`` accepts (``"#1f77b4"``, ``"orange"``).
    axis : {"left", "right"}
        Which y axis the curve is drawn against.
    style : {"solid", "dash", "dot"}
        Line style.
    markers : bool
        Draw a dot at every point (useful for sparse curves such as validation scores).
    xs, ys : list of float
        The points, in the order they arrived.
    """

    name: str
    color: str = "#1f77b4"
    axis: str = "left"
    style: str = "solid"
    markers: bool = False
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def finite_ys(self) -> list[float]:
        """The y values that can be drawn (NaN and infinities are skipped)."""
        return [y for y in self.ys if math.isfinite(y)]


def nice_range(values: Sequence[float], *, log: bool = False) -> tuple[float, float]:
    """Axis limits that contain ``values`` with a little headroom.

    A constant series gets a small band around its value, so that it is drawn as a line in the
    middle rather than on the frame. With ``log``, the limits are powers-of-ten friendly and
    non-positive values are ignored; returns ``(lo, hi)`` in data units either way.
    """
    finite = [float(v) for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not finite:
        return (0.1, 1.0) if log else (0.0, 1.0)
    lo, hi = min(finite), max(finite)
    if log:
        llo, lhi = math.log10(lo), math.log10(hi)
        if lhi - llo < 1e-9:
            llo, lhi = llo - 0.5, lhi + 0.5
        pad = 0.05 * (lhi - llo)
        return 10 ** (llo - pad), 10 ** (lhi + pad)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        half = 0.5 if lo == 0 else 0.05 * abs(lo)
        return lo - half, hi + half
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def nice_ticks(lo: float, hi: float, *, log: bool = False, count: int = 4) -> list[float]:
    """About ``count`` round tick values inside ``[lo, hi]`` (1-2-5 steps, or decades)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    if log:
        first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
        ticks = [10.0**e for e in range(first, last + 1)]
        if len(ticks) >= 2:
            return ticks
        # less than a decade: round linear values (the painter places them logarithmically)
        return [t for t in nice_ticks(lo, hi, count=count) if t > 0]
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    value = start
    while value <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(value) < 1e-12 * step else value)
        value += step
    return ticks


def format_ticks(ticks: Sequence[float]) -> list[str]:
    """Labels for a row of ticks, with just enough decimals to tell them apart.

    A fixed number of significant digits prints close ticks alike (38.01, 38.02, 38.03 all read
    "38"); here the decimals follow the spacing of the ticks, and grow until no two labels are
    equal. Labels that already differ in the compact form (three significant digits, exponents
    for very large or small magnitudes) are kept as they are.
    """
    values = [float(t) for t in ticks]
    compact = [_format(v) for v in values]
    magnitude = max((abs(v) for v in values), default=0.0)
    if len(set(compact)) == len(compact) or magnitude >= 1e4 or 0 < magnitude < 1e-2:
        return compact
    steps = [abs(b - a) for a, b in itertools.pairwise(values) if b != a]
    step = min(steps) if steps else magnitude or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    for extra in range(6):
        labels = [f"{v:.{decimals + extra}f}" for v in values]
        labels = ["0" if float(text) == 0 else text for text in labels]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def reference_label_y(line_y: float, frame_top: float, text_height: float) -> float:
    """Baseline of a reference line's label: above the line, or below it near the top.

    Above the line, a label close to the frame's top would run into the title drawn over the
    frame; there it goes under the line instead.
    """
    if line_y - text_height < frame_top:
        return line_y + text_height
    return line_y - 2


def _format(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-2:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


class LinePlot(QWidget):
    """A compact plot of a few growing curves against a shared x axis.

    Parameters
    ----------
    title : str
        Drawn at the top left.
    x_label : str
        Shown under the x axis, right-aligned.
    left_label, right_label : str
        Units of the two y axes, shown after the title (``right_label`` only when a series
        uses the right axis).
    log_left : bool
        Logarithmic left axis (falls back to linear when a value is not positive).
    parent : QWidget, optional
        Qt parent.
    """

    def __init__(
        self,
        title: str = "",
        *,
        x_label: str = "step",
        left_label: str = "",
        right_label: str = "",
        log_left: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.x_label = x_label
        self.left_label = left_label
        self.right_label = right_label
        self.log_left = log_left
        self._series: dict[str, PlotSeries] = {}
        self._hlines: list[tuple[float, str, str]] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    # ------------------------------------------------------------------ data
    def add_series(self, name: str, *, color: str = "#1f77b4", axis: str = "left",
                   style: str = "solid", markers: bool = False) -> PlotSeries:
        """Declare a curve (``ValueError`` for an unknown axis or style)."""
        if axis not in ("left", "right"):
            raise ValueError(f"axis must be 'left' or 'right'; got {axis!r}")
        if style not in _STYLES:
            raise ValueError(f"style must be one of {sorted(_STYLES)}; got {style!r}")
        series = PlotSeries(name, color=color, axis=axis, style=style, markers=markers)
        self._series[name] = series
        self.update()
        return series

    def append(self, name: str, x: float, y: float) -> None:
        """Add one point to the curve ``name`` (``KeyError`` if it was not declared)."""
        series = self._series[name]
        series.xs.append(float(x))
        series.ys.append(float(y))
        self.update()

    def set_reference(self, value: float | None, label: str = "", *,
                      color: str = "#888888") -> None:
        """A horizontal dashed line on the left axis (e.g. the starting model's score)."""
        self._hlines = [] if value is None or not math.isfinite(value) else [
            (float(value), label, color)]
        self.update()

    def clear(self) -> None:
        """Remove every point (the series stay declared)."""
        for series in self._series.values():
            series.xs.clear()
            series.ys.clear()
        self._hlines = []
        self.update()

    def series(self, name: str) -> PlotSeries:
        """The curve called ``name``."""
        return self._series[name]

    def series_names(self) -> list[str]:
        """Declared curves, in declaration order."""
        return list(self._series)

    def sizeHint(self) -> QSize:
        return QSize(320, 150)

    # ------------------------------------------------------------------ geometry
    def _limits(self) -> tuple[tuple[float, float], tuple[float, float] | None,
                               tuple[float, float], bool]:
        xs = [x for s in self._series.values() for x in s.xs]
        x_range = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if x_range[1] <= x_range[0]:
            x_range = (x_range[0] - 0.5, x_range[0] + 0.5)
        left = [y for s in self._series.values() if s.axis == "left" for y in s.finite_ys()]
        left += [v for v, _, _ in self._hlines]
        log = self.log_left and bool(left) and min(left) > 0
        right = [y for s in self._series.values() if s.axis == "right" for y in s.finite_ys()]
        has_right = any(s.axis == "right" for s in self._series.values())
        return (nice_range(left, log=log), nice_range(right) if has_right else None, x_range,
                log)

    # ------------------------------------------------------------------ painting
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        fg = palette.color(palette.ColorRole.WindowText)
        faint = QColor(fg)
        faint.setAlpha(60)
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.85))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        text_h = metrics.height()

        (ylo, yhi), right, (xlo, xhi), log = self._limits()
        margin_l = metrics.horizontalAdvance("0.000e-0") + 4
        margin_r = (metrics.horizontalAdvance("0.000e-0") + 4) if right else 8
        frame = QRectF(margin_l, text_h + 4, max(10.0, self.width() - margin_l - margin_r),
                       max(10.0, self.height() - 2 * text_h - 10))

        def fx(x: float) -> float:
            return frame.left() + (x - xlo) / (xhi - xlo) * frame.width()

        def fy(y: float, axis: str) -> float:
            if axis == "right" and right is not None:
                lo, hi, is_log = right[0], right[1], False
            else:
                lo, hi, is_log = ylo, yhi, log
            if is_log:
                y, lo, hi = math.log10(y), math.log10(lo), math.log10(hi)
            return frame.bottom() - (y - lo) / (hi - lo) * frame.height()

        # title, axes labels
        painter.setPen(fg)
        units = [u for u in (self.left_label, self.right_label and
                             any(s.axis == "right" for s in self._series.values())
                             and f"right: {self.right_label}") if u]
        painter.drawText(QPointF(frame.left(), text_h),
                         self.title + (f" ({'; '.join(units)})" if units else ""))
        painter.drawText(QRectF(frame.left(), frame.bottom() + 2, frame.width(), text_h),
                         int(Qt.AlignmentFlag.AlignHCenter), self.x_label)
        # grid and ticks
        left_ticks = nice_ticks(ylo, yhi, log=log)
        for tick, text in zip(left_ticks, format_ticks(left_ticks), strict=True):
            y = fy(tick, "left")
            painter.setPen(QPen(faint, 1))
            painter.drawLine(QPointF(frame.left(), y), QPointF(frame.right(), y))
            painter.setPen(fg)
            painter.drawText(QRectF(0, y - text_h / 2, margin_l - 4, text_h),
                             int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                             text)
        if right is not None:
            right_ticks = nice_ticks(*right)
            for tick, text in zip(right_ticks, format_ticks(right_ticks), strict=True):
                y = fy(tick, "right")
                painter.setPen(fg)
                painter.drawText(QRectF(frame.right() + 4, y - text_h / 2, margin_r - 4, text_h),
                                 int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                                 text)
        if xhi - xlo >= 1:
            painter.drawText(QRectF(frame.left(), frame.bottom() + 2, 60, text_h),
                             int(Qt.AlignmentFlag.AlignLeft), _format(round(xlo)))
            painter.drawText(QRectF(frame.right() - 60, frame.bottom() + 2, 60, text_h),
                             int(Qt.AlignmentFlag.AlignRight), _format(round(xhi)))
        painter.setPen(QPen(fg, 1))
        painter.drawRect(frame)

        # reference lines
        for value, label, color in self._hlines:
            if log and value <= 0:
                continue
            y = fy(value, "left")
            painter.setPen(QPen(QColor(color), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(frame.left(), y), QPointF(frame.right(), y))
            if label:
                painter.drawText(QPointF(frame.left() + 4,
                                         reference_label_y(y, frame.top(), text_h)), label)

        # curves
        painter.setClipRect(frame.adjusted(-3, -3, 3, 3))
        for series in self._series.values():
            pen = QPen(QColor(series.color), 1.6, _STYLES[series.style])
            painter.setPen(pen)
            path = QPainterPath()
            started = False
            points = []
            for x, y in zip(series.xs, series.ys):
                drawable = math.isfinite(y) and (y > 0 or not (log and series.axis == "left"))
                if not drawable:
                    started = False
                    continue
                point = QPointF(fx(x), fy(y, series.axis))
                points.append(point)
                if started:
                    path.lineTo(point)
                else:
                    path.moveTo(point)
                    started = True
            painter.drawPath(path)
            if series.markers or len(points) == 1:
                painter.setBrush(QColor(series.color))
                for point in points:
                    painter.drawEllipse(point, 2.5, 2.5)
                painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setClipping(False)

        # legend
        x = frame.right() - 6
        y = frame.top() + text_h
        for series in reversed(list(self._series.values())):
            label = series.name + (" (right)" if series.axis == "right" else "")
            width = metrics.horizontalAdvance(label)
            painter.setPen(fg)
            painter.drawText(QPointF(x - width, y), label)
            painter.setPen(QPen(QColor(series.color), 2, _STYLES[series.style]))
            painter.drawLine(QPointF(x - width - 16, y - text_h / 3),
                             QPointF(x - width - 4, y - text_h / 3))
            x -= width + 26
