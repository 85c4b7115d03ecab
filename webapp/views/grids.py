"""Tables shown with columns that fit their cells (tables.column_widths), so that no value is cut off mid-way
("0.677 (0.615–" of an AUC with its CI): the model card's and the batch page's per-source tables."""
from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from webapp.views.tables import column_widths


def fitted_table(rows: Sequence[dict[str, Any]], **kwargs) -> None:
    st.dataframe(rows, hide_index=True, column_config={k: st.column_config.Column(width=w)
                                                       for k, w in column_widths(rows).items()}, **kwargs)
