"""The app's charts (Altair, as st.altair_chart draws them). One ROC chart serves every page that shows one."""
from __future__ import annotations

from typing import Sequence

import altair as alt

AXES = {"fpr": "1 − specificity (false positive rate)", "tpr": "sensitivity (true positive rate)"}


def roc_chart(points: Sequence[dict], *, by: str | None = None,
              operating_point: tuple[float, float, str] | None = None) -> alt.LayerChart:
    """ROC curve(s) over the chance diagonal. `points`: dicts with fpr, tpr and i (their order along the curve: ties
    in fpr keep their rising tpr), and with `by` a field naming each point's curve (one colour per curve, legend
    below). `operating_point`: (fpr, tpr, its threshold as text), drawn as a red dot with that tooltip."""
    encoding = dict(x=alt.X("fpr:Q", title=AXES["fpr"], scale=alt.Scale(domain=[0, 1])),
                    y=alt.Y("tpr:Q", title=AXES["tpr"], scale=alt.Scale(domain=[0, 1])), order="i:Q")
    if by:
        encoding["color"] = alt.Color(f"{by}:N", title=None, legend=alt.Legend(orient="bottom"))
    curves = alt.Chart(alt.Data(values=list(points))).mark_line().encode(**encoding)
    chance = alt.Chart(alt.Data(values=[{"fpr": 0, "tpr": 0}, {"fpr": 1, "tpr": 1}])).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="fpr:Q", y="tpr:Q")
    chart = chance + curves
    if operating_point is not None:
        fpr, tpr, label = operating_point
        chart += alt.Chart(alt.Data(values=[{"fpr": fpr, "tpr": tpr, "operating point": label}])).mark_point(
            size=140, filled=True, color="#d62728").encode(x="fpr:Q", y="tpr:Q", tooltip=["operating point:N"])
    return chart
