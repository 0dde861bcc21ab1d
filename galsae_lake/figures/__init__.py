"""Figures of the lake's analysis (Altair) and the feature browser, by job:

* :mod:`~galsae_lake.figures.data` reads what the analysis recorded (one model, one split);
* :mod:`~galsae_lake.figures.numerics` pure numbers behind the charts (groups, KDE, spectra);
* :mod:`~galsae_lake.figures.charts` chart builders, frames in, ``alt.Chart`` out, one theme;
* :mod:`~galsae_lake.figures.export` PNG/SVG files and the offline HTML report (templates/);
* :mod:`~galsae_lake.figures.browser` the feature browser page (templates/browser.html);
* :mod:`~galsae_lake.figures.build` which figures a model gets, and :func:`make_figures`.
"""

from galsae_lake.figures.build import make_figures
from galsae_lake.figures.data import FigureData, load_figure_data

__all__ = ["FigureData", "load_figure_data", "make_figures"]
