"""Seaborn figure helpers for the study notebooks (one function per figure kind).

Each helper takes tidy pandas tables or arrays and returns the matplotlib ``Figure`` so
notebooks stay free of plotting code. :func:`setup` fixes the style and a modest
resolution so the rendered HTML stays small.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Panel-title size (points): readable in the rendered HTML at the notebooks' dpi.
TITLE_SIZE = 12


def setup(dpi: int = 80) -> None:
    """Seaborn theme, figure resolution and PNG output for inline figures."""
    sns.set_theme(style="whitegrid", context="notebook")
    plt.rcParams["figure.dpi"] = dpi
    plt.rcParams["savefig.dpi"] = dpi
    try:  # inside a kernel: embed PNG only (no SVG/PDF duplicates in the notebook)
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:  # pragma: no cover - plain Python, nothing to configure
        pass


def _percent(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    out = frame.copy()
    for metric in metrics:
        out[metric] = 100 * out[metric]
    return out


def metric_vs_param(
    frame: pd.DataFrame, param: str, metrics: Sequence[str], title: str = ""
) -> Figure:
    """One panel per metric: every seed and the mean ± sd over seeds against ``param``.

    The values sit on a categorical axis (in numeric order), so a parameter spanning decades
    with a zero (the SO weight λ) shows λ = 0 beside 10⁻³ … 1 with no empty axis range.
    """
    data = _percent(frame, metrics)
    values = sorted(pd.unique(data[param]), key=lambda v: float(v))
    position = {v: i for i, v in enumerate(values)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.scatter(data[param].map(position), data[metric], color="C1", s=16, zorder=2,
                   label="one seed")
        stats = data.groupby(param)[metric].agg(["mean", "std"]).reindex(values)
        ax.errorbar(range(len(values)), stats["mean"], yerr=stats["std"].fillna(0.0),
                    color="C0", marker="s", capsize=4, zorder=3, label="mean ± sd over seeds")
        ax.set_xticks(range(len(values)), [f"{float(v):g}" for v in values])
        ax.set_xlabel(param)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def paired_seeds(
    frame: pd.DataFrame, variant_column: str, order: Sequence[str], metrics: Sequence[str]
) -> Figure:
    """Per metric: each seed's value in each arm, joined by a line (the paired design).

    Dots sit exactly on the arms (no jitter) so every line ends on its two dots; the arm
    means ± sd over seeds are drawn beside them.
    """
    data = _percent(frame, metrics)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        wide = data.pivot_table(index="seed", columns=variant_column, values=metric)
        wide = wide[[c for c in order if c in wide.columns]]
        x = np.arange(wide.shape[1])
        for i, (_, row) in enumerate(wide.iterrows()):
            ax.plot(x, row.to_numpy(), color="0.6", linewidth=1, marker="o", markersize=5,
                    markerfacecolor="C1", markeredgecolor="C1", zorder=2,
                    label="one seed (paired)" if i == 0 else None)
        ax.errorbar(x + 0.12, wide.mean().to_numpy(), yerr=wide.std(ddof=1).to_numpy(),
                    fmt="s", color="C0", capsize=4, zorder=3, label="mean ± sd over seeds")
        ax.set_xticks(x, list(wide.columns))
        ax.set_xlim(-0.4, len(x) - 0.6)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}: {len(wide)} seeds", fontsize=TITLE_SIZE)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def paired_effects(frame: pd.DataFrame, unit: str = "pp", title: str = "") -> Figure:
    """Per-seed paired differences per panel label, with the mean and its 95 % t-CI.

    ``frame`` columns: ``panel`` (e.g. "icons · frozen"), ``seed``, ``effect``, and
    ``ci_low``/``ci_high`` (the same on every row of a panel; ``None``/NaN when the panel
    has no interval, e.g. one seed: then the mean is drawn alone, labelled ``n = 1: no CI``),
    optionally ``claim``: a panel holding several claims is split into one per claim.
    """
    if "claim" in frame.columns and (frame.groupby("panel")["claim"].nunique() > 1).any():
        # Two claims on one dataset and tier (e.g. two groups): one panel per claim.
        frame = frame.assign(panel=frame["panel"] + "\n" + frame["claim"].astype(str))
    panels = list(dict.fromkeys(frame["panel"]))
    # Each panel as wide as its widest tick-label line (at the tick size in effect: 11 pt
    # under setup()'s theme), and room for the legend beside the axes: at 1.8 in a panel,
    # "glyphs · frozen" ran into "icons · fine-tuned".
    from matplotlib.font_manager import FontProperties

    tick = FontProperties(size=plt.rcParams["xtick.labelsize"]).get_size_in_points()
    panel = max(1.8, _text_width_ratio(panels, None, 1.0, tick, least=0.0) + 0.35)
    fig, ax = plt.subplots(figsize=(max(4.5, panel * len(panels) + 3.5), 3.8))
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once, whichever panel has it
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for i, panel in enumerate(panels):
        part = frame[frame["panel"] == panel].sort_values("seed")
        offsets = np.linspace(-0.18, 0.18, len(part)) if len(part) > 1 else np.zeros(1)
        ax.scatter(i + offsets, part["effect"], s=22, color="C1", zorder=2,
                   label=once("one seed: treatment − baseline"))
        mean = float(part["effect"].mean())
        low, high = (_finite(part[c].iloc[0]) for c in ("ci_low", "ci_high"))
        if low is None or high is None:  # one seed (or no spread estimate): no interval
            ax.scatter([i + 0.32], [mean], marker="D", color="black", zorder=3,
                       label=once("mean (no CI)"))
            interval = f"n = {len(part)}: no CI"
        else:
            ax.errorbar([i + 0.32], [mean], yerr=[[mean - low], [high - mean]], fmt="D",
                        color="black", capsize=5, zorder=3,
                        label=once("mean, 95% t-CI"))
            interval = f"[{low:+.2f}, {high:+.2f}]\nn = {len(part)}"
        ax.annotate(f"{mean:+.2f}\n{interval}", (i + 0.42, mean), fontsize=8, va="center")
    ax.axhline(0.0, color="0.3", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(panels)), panels)
    ax.set_xlim(-0.6, len(panels) + 0.3)
    ax.margins(y=0.15)
    ax.set_ylabel(f"effect ({unit})")
    if title:
        ax.set_title(title, fontsize=TITLE_SIZE)
    # Beside the axes, not on them: inside, it covered the first panel's seeds.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def sweep_by_category(
    frame: pd.DataFrame, param: str, metric: str, panel: str = "dataset", title: str = ""
) -> Figure:
    """``metric`` (%) against the values of ``param`` on a categorical axis, one panel per
    ``panel`` value: every seed as a dot, mean ± sd over seeds as a line with error bars.

    A categorical axis shows λ = 0 (no SO) beside the decades without a symlog axis.
    """
    data = _percent(frame, [metric])
    values = sorted(pd.unique(data[param]), key=float)
    labels = [f"{float(v):g}" for v in values]
    groups = list(dict.fromkeys(data[panel]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.6), squeeze=False)
    for ax, name in zip(axes[0], groups, strict=True):
        part = data[data[panel] == name]
        x = part[param].map({v: i for i, v in enumerate(values)})
        ax.scatter(x, part[metric], color="C1", s=16, zorder=2, label="one seed")
        stats = part.groupby(param)[metric].agg(["mean", "std", "count"]).reindex(values)
        ax.errorbar(range(len(values)), stats["mean"], yerr=stats["std"], color="C0",
                    marker="s", capsize=4, zorder=3, label="mean ± sd over seeds")
        ax.set_xticks(range(len(values)), labels)
        ax.set_xlabel(param)
        ax.set_ylabel(f"{metric} (%)")
        n = int(stats["count"].min()) if stats["count"].notna().all() else 0
        ax.set_title(f"{name} ({n}+ seeds per value)", fontsize=TITLE_SIZE)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def curves_with_band(
    frame: pd.DataFrame, y: str, hue: str, panel: str = "dataset", ylabel: str | None = None,
    percent: bool = False, title: str = "",
) -> Figure:
    """``y`` against epoch, mean ± sd band over seeds per ``hue``, one panel per ``panel``."""
    data = _percent(frame, [y]) if percent else frame
    groups = list(dict.fromkeys(data[panel]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), squeeze=False)
    for ax, name in zip(axes[0], groups, strict=True):
        part = data[data[panel] == name].dropna(subset=[y])
        sns.lineplot(data=part, x="epoch", y=y, hue=hue, errorbar="sd", ax=ax, marker="o",
                     markersize=3)
        seeds = part.groupby(hue)["seed"].nunique()
        ax.set_title(f"{name} (mean ± sd over {seeds.min()}–{seeds.max()} seeds)",
                     fontsize=TITLE_SIZE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel or y)
        ax.legend(fontsize=8, title=hue, title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    fig.tight_layout()
    return fig


def cosine_heatmaps(matrices: Mapping[str, np.ndarray], max_classes: int = 64) -> Figure:
    """Side-by-side heatmaps of proxy cosine matrices (first ``max_classes`` classes).

    One shared, labelled colour bar (−1 … 1) so that every panel keeps the same size; each
    title says how many of the classes are shown.
    """
    n = len(matrices)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.6 * n + 0.8, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * n + [0.06]})
    for ax, (title, matrix) in zip(axes[0][:n], matrices.items(), strict=True):
        total = np.asarray(matrix).shape[0]
        shown = min(max_classes, total)
        sub = np.asarray(matrix)[:shown, :shown]
        sns.heatmap(sub, vmin=-1, vmax=1, cmap="vlag", square=True, ax=ax,
                    xticklabels=False, yticklabels=False, cbar=False)
        ax.set_title(f"{title}\n(first {shown} of {total} classes)", fontsize=TITLE_SIZE - 1)
        ax.set_xlabel("class (proxy) j")
        ax.set_ylabel("class (proxy) i")
    bar = fig.colorbar(axes[0][0].collections[0], cax=axes[0][n])
    bar.set_label("cosine between proxies i and j")
    fig.tight_layout()
    return fig


def distributions(
    frame: pd.DataFrame, value: str, hue: str, title: str = "", xlabel: str | None = None
) -> Figure:
    """Overlaid density-normalised histograms of ``value`` per ``hue`` group."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.histplot(data=frame, x=value, hue=hue, stat="density", common_norm=False,
                 element="step", bins=40, ax=ax)
    ax.set_xlabel(xlabel or value)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(frame: pd.DataFrame, hue: str = "model") -> Figure:
    """One panel per quantity of a long ``epoch, quantity, value, <hue>`` table."""
    quantities = list(dict.fromkeys(frame["quantity"]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(4.0 * len(quantities), 3.2),
                             squeeze=False)
    for ax, quantity in zip(axes[0], quantities, strict=True):
        part = frame[frame["quantity"] == quantity]
        sns.lineplot(data=part, x="epoch", y="value", hue=hue, marker="o", ax=ax)
        ax.set_title(quantity, fontsize=TITLE_SIZE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def tsne_panels(maps: Mapping[str, pd.DataFrame]) -> Figure:
    """t-SNE maps side by side: embeddings coloured by class, proxies as black crosses."""
    fig, axes = plt.subplots(1, len(maps), figsize=(4.6 * len(maps), 4.4), squeeze=False)
    for ax, (title, coords) in zip(axes[0], maps.items(), strict=True):
        points = coords[coords["kind"] == "embedding"]
        proxies = coords[coords["kind"] == "proxy"]
        ax.scatter(points["x"], points["y"], c=points["label"] % 20, cmap="tab20", s=6,
                   alpha=0.7, linewidths=0)
        ax.scatter(proxies["x"], proxies["y"], marker="x", c="black", s=18, linewidths=1,
                   label="proxies")
        ax.set_title(title, fontsize=TITLE_SIZE)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def images_per_class(frame: pd.DataFrame) -> Figure:
    """Histogram of images per class, one panel per split (columns ``split, images``)."""
    splits = list(dict.fromkeys(frame["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(3.8 * len(splits), 3.0), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        sns.histplot(frame[frame["split"] == split]["images"], discrete=True, ax=ax)
        ax.set_title(split, fontsize=10)
        ax.set_xlabel("images per class")
    fig.tight_layout()
    return fig


def image_grid(
    images: Sequence[Sequence[Any]], row_titles: Sequence[str], inches: float = 0.9
) -> Figure:
    """Grid of PIL images: one row per class (titled with the class name).

    ``inches`` per image keeps small datasets (64-px icons) near their native size.
    """
    rows = len(images)
    cols = max((len(r) for r in images), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(inches * cols, (inches + 0.15) * rows),
                             squeeze=False)
    for r, (row, title) in enumerate(zip(images, row_titles, strict=True)):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
        axes[r][0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- text in any script

#: Font families tried first for class names in CJK scripts (sans designs with a wide
#: coverage, as Debian packages them); any other font found that has the characters follows.
CJK_FAMILIES: tuple[str, ...] = (
    "Droid Sans Fallback", "Noto Sans CJK JP", "Noto Sans CJK SC", "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei", "IPAexGothic", "VL Gothic",
)

#: Font files are looked for in these directories (system fonts), then in the glyph dataset's
#: label fonts (``<cache>/label-fonts``: subsets of its own Debian fonts with every class
#: character, kept after the build) and its unpacked fonts (``<cache>/glyph-fonts``, while a
#: build keeps them).
FONT_DIRS: tuple[str, ...] = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts")


def _font_dirs() -> list[Path]:
    from dml_study.paths import GLYPH_FONTS_DIR, LABEL_FONTS_DIR, cache_root

    return [Path(d).expanduser() for d in FONT_DIRS] + [cache_root() / LABEL_FONTS_DIR,
                                                        cache_root() / GLYPH_FONTS_DIR]


@functools.lru_cache(maxsize=1)
def _default_charmap() -> frozenset[int]:
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family=plt.rcParams["font.family"]))
    return frozenset(ft2font.FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=64)
def font_for(chars: frozenset[int]) -> str | None:
    """The family of a font file that has every code point of ``chars`` (registered with
    matplotlib), or ``None``. Families of :data:`CJK_FAMILIES` are preferred; ``.ttc``
    collections are read by their first face."""
    from matplotlib import font_manager, ft2font

    found: list[tuple[int, str, Path]] = []
    for directory in _font_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.suffix.lower() not in (".ttf", ".otf", ".ttc"):
                continue
            try:
                font = ft2font.FT2Font(str(path))
                if not chars <= set(font.get_charmap()):
                    continue
            except (OSError, RuntimeError, ValueError):
                continue
            family = font.family_name
            rank = next((i for i, f in enumerate(CJK_FAMILIES) if f == family), len(CJK_FAMILIES))
            found.append((rank, family, path))
            if rank == 0:
                break
        if found and found[0][0] == 0:
            break
    if not found:
        return None
    _, family, path = min(found, key=lambda item: (item[0], str(item[2])))
    font_manager.fontManager.addfont(str(path))
    return family


def readable_text(texts: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """``texts`` as matplotlib can draw them, and the font families to draw them with.

    Characters the default font lacks (CJK class names such as ``loquat (枇)``) are drawn
    with a font that has them (:func:`font_for`: the families are ``[default, that font]``,
    matplotlib falls back glyph by glyph); when no such font is installed they are written
    as their code points, ``loquat (U+6787)``, so no character is drawn as an empty box.
    """
    default = _default_charmap()
    missing = frozenset(ord(c) for t in texts for c in t if ord(c) > 0x7F and ord(c) not in default)
    if not missing:
        return list(texts), None
    family = font_for(missing)
    if family is not None:
        base = plt.rcParams["font.family"]
        return list(texts), [*(base if isinstance(base, list) else [base]), family]
    return ["".join(f"U+{ord(c):04X}" if ord(c) in missing else c for c in t)
            for t in texts], None


def short_name(name: str, width: int = 26) -> str:
    """``name`` cut to about ``width`` characters; a trailing ``(…)`` part (glyphs' character,
    a disambiguating raw name) is kept whole: ``"unit of length equal… (丈)"``."""
    if len(name) <= width:
        return name
    head, tail = name, ""
    if name.endswith(")") and " (" in name:
        head, tail = name[: name.rindex(" (")], name[name.rindex(" ("):]
    room = max(4, width - len(tail) - 1)
    return head[:room].rstrip(" ,;") + "…" + tail


def _frame(ax: Any, ok: bool) -> None:
    """Green frame and ✓ below for a correct result, red frame and ✗ for a wrong one."""
    color = "#1a7f37" if ok else "#c62828"
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(3)
    ax.set_xlabel("✓" if ok else "✗", color=color, fontsize=11, labelpad=1,
                  fontweight="bold")


def _thumb(ax: Any, image: Any) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def retrieval_gallery(comparison: Any, inches: float = 0.8, name_width: int = 24) -> Figure:
    """Seeded queries with their top-k results in both arms, right and wrong marked.

    ``comparison`` is a :class:`dml_study.study.analysis.retrieval.RetrievalComparison`. One
    row per query: the query image titled with its class (display name), then the top-k
    results of each arm, in rank order. A result of the query's class has a green frame and
    a ✓, another class a red frame and a ✗ (not colour alone).
    """
    arms = list(comparison.arms)
    k = comparison.k
    n = len(comparison.queries)
    names, families = readable_text([short_name(comparison.names[int(lab)], name_width)
                                     for lab in comparison.query_labels])
    ratios = [1.45, *([0.25] + [1.0] * k) * len(arms)]
    fig, axes = plt.subplots(n, len(ratios), squeeze=False,
                             figsize=(inches * sum(ratios) + 0.4, (inches + 0.42) * n + 0.5),
                             gridspec_kw={"width_ratios": ratios, "wspace": 0.08,
                                          "hspace": 0.55})
    for r in range(n):
        query = int(comparison.queries[r])
        for ax in axes[r]:
            ax.axis("off")
        ax = axes[r][0]
        ax.axis("on")
        _thumb(ax, comparison.thumbnails[int(comparison.image_index[query])])
        ax.set_title(names[r], fontsize=7, loc="center", family=families)
        ax.set_xlabel("query", fontsize=7, labelpad=1)
        for a, arm in enumerate(arms):
            start = 1 + a * (k + 1) + 1
            for j in range(k):
                ax = axes[r][start + j]
                ax.axis("on")
                row = int(comparison.neighbours[arm][r, j])
                _thumb(ax, comparison.thumbnails[int(comparison.image_index[row])])
                _frame(ax, bool(comparison.correct[arm][r, j]))
    for a, arm in enumerate(arms):
        start = 1 + a * (k + 1) + 1
        hits = int(comparison.correct[arm][:, 0].sum())
        left, right = axes[0][start].get_position(), axes[0][start + k - 1].get_position()
        fig.text((left.x0 + right.x1) / 2, left.y1 + 0.25 * left.height,
                 f"{arm}: top {k} (top-1 correct for {hits} of {n})", ha="center",
                 va="bottom", fontsize=TITLE_SIZE - 2, fontweight="bold")
    top = axes[0][0].get_position()
    fig.text(0.5, top.y1 + 0.75 * top.height,
             f"{comparison.dataset}, seed {comparison.seed}: {n} seeded test queries",
             ha="center", va="bottom", fontsize=TITLE_SIZE)
    return fig


#: Font size (pt) of the class labels of :func:`class_changes`.
LABEL_SIZE = 7


def _text_width_ratio(labels: list[str], families: Any, inches: float, size: float,
                      least: float = 2.4) -> float:
    """Width of the widest line of ``labels`` at ``size`` pt in the given font, in units of
    ``inches`` (a grid column's width), plus a small margin; at least ``least``."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family=families, size=size) if families else FontProperties(size=size)
    widest = max((TextPath((0, 0), line, prop=prop).get_extents().width
                  for label in labels for line in label.splitlines() if line.strip()),
                 default=0.0)
    return max(least, widest / 72.0 / inches + 0.15)


def class_changes(
    comparison: Any, n: int = 5, per_class: int = 4, inches: float = 0.8, name_width: int = 30
) -> Figure:
    """The classes whose test R@1 the treatment raises most and lowers most, with images.

    Two columns of up to ``n`` rows: gains (left) and losses (right); each row names the
    class (display name), its R@1 in both arms, the change and its number of test images,
    then ``per_class`` of its test images. Classes whose R@1 does not change are in neither.
    """
    gains, losses = comparison.extremes(n)
    base, treat = comparison.arms[0], comparison.arms[-1]
    panels = [("gains most", "rises", gains), ("loses most", "falls", losses)]
    labels = [f"{short_name(r['class'], name_width)}\n{base} {r['baseline_R@1']:.0f} % → "
              f"{treat} {r['treatment_R@1']:.0f} %\n({r['change']:+.0f} pp, "
              f"{int(r['images'])} images)"
              for *_, frame in panels for _, r in frame.iterrows()]
    labels, families = readable_text(labels)
    rows = max(len(gains), len(losses), 1)
    # The label column is as wide as the widest label as drawn: at a fixed width the images
    # covered the end of long glosses, and with it the (字) that tells two glyph classes of
    # one gloss apart.
    columns, left, right, wspace = 2 * per_class + 3, 0.02, 0.98, 0.06
    # A column of ratio r is r * inches * scale wide (GridSpec: the margins, then wspace
    # times the mean column width between two columns).
    scale = (right - left) * columns / (columns + wspace * (columns - 1))
    name = _text_width_ratio(labels, families, inches * scale, LABEL_SIZE)
    ratios = [name] + [1.0] * per_class + [0.3] + [name] + [1.0] * per_class
    fig, axes = plt.subplots(rows, len(ratios), squeeze=False,
                             figsize=(inches * sum(ratios), (inches + 0.1) * rows + 0.7),
                             gridspec_kw={"width_ratios": ratios, "wspace": wspace,
                                          "hspace": 0.25, "left": left, "right": right})
    for ax in axes.flat:
        ax.axis("off")
    position = 0
    for p, (title, verb, frame) in enumerate(panels):
        col = p * (per_class + 2)
        axes[0][col].set_title(f"{treat} − {base}: {title}", fontsize=TITLE_SIZE - 2,
                               loc="left", fontweight="bold")
        if frame.empty:
            axes[0][col].text(0.0, 0.5, f"no class's R@1 {verb}", fontsize=8, va="center",
                              transform=axes[0][col].transAxes)
        for r, (_, row) in enumerate(frame.iterrows()):
            axes[r][col].text(0.0, 0.5, labels[position], fontsize=LABEL_SIZE, va="center",
                              ha="left", family=families, transform=axes[r][col].transAxes)
            position += 1
            for j, image_row in enumerate(comparison.class_rows(int(row["label"]), per_class)):
                ax = axes[r][col + 1 + j]
                ax.axis("on")
                _thumb(ax, comparison.thumbnails[int(comparison.image_index[image_row])])
    top = axes[0][0].get_position()
    fig.text(0.5, top.y1 + 0.6 * top.height, f"{comparison.dataset}, seed {comparison.seed}: "
             f"per-class test R@1, {treat} vs {base}", ha="center", va="bottom",
             fontsize=TITLE_SIZE)
    return fig
