"""Model card: everything about the shipped model, read from weights/model_card.json (never repeated here)."""
from typing import Any

import streamlit as st

import ui
from covidxr.session import METRIC_TITLES, breakdown_rows, class_title, is_estimates, metric_rows

card = ui.card()


def title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def show(obj: Any, depth: int = 0) -> None:
    """Render a card section whatever its nesting: metric reports as tables with CIs, groups of
    reports (per source, leave-one-source-out) as one row per group, the rest as facts."""
    if is_estimates(obj):
        st.dataframe(metric_rows(obj), hide_index=True)
        facts = {k: v for k, v in obj.items() if not isinstance(v, (dict, list)) and k not in METRIC_TITLES}
        if facts:
            st.caption(" · ".join(f"{k}: {v}" for k, v in facts.items()))
        return
    if isinstance(obj, dict) and obj and all(is_estimates(v) for v in obj.values()):
        st.dataframe(breakdown_rows(obj), hide_index=True)
        return
    if isinstance(obj, dict):
        scalars = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        if scalars:
            st.dataframe([{"": title(k), "value": str(v)} for k, v in scalars.items()], hide_index=True)
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                st.markdown(f"{'#' * min(4 + depth, 6)} {title(k)}")
                show(v, depth + 1)
        return
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        st.dataframe(obj, hide_index=True)
    elif isinstance(obj, list):
        st.markdown("\n".join(f"- {v}" for v in obj))
    else:
        st.write(obj)


st.title(f"Model card · {card.name}")
st.warning(card.intended_use, icon=":material/medical_information:")

st.header("Architecture")
st.dataframe([
    {"": "Network", "value": card.architecture},
    {"": "Input", "value": f"{card.input_size} × {card.input_size} px lung crop "
                           f"(lung segmenter at {card.lung_input_size} px)"},
    {"": "Normalisation", "value": f"mean {card.mean}, std {card.std}"},
    {"": "Classes", "value": ", ".join(class_title(c) for c in card.class_names)},
    {"": "Decision", "value": f"{class_title(card.positive_class)} vs not"},
    {"": "Calibration", "value": f"temperature scaling, T = {card.temperature:.3f}"},
    {"": "Weights", "value": f"{card.weights_file} (sha256 {card.weights_sha256[:16]}…)"},
], hide_index=True)

st.header("Decision threshold")
st.markdown(f"A film is called **positive for a {class_title(card.positive_class)} pattern** when its "
            f"calibrated probability is at least **{card.threshold:.3f}**.")
st.caption(f"How it was chosen: {card.threshold_rule}")

for heading, section, missing in [("Training data and sources", card.data, "no training data"),
                                  ("Performance", card.metrics, "no metrics yet"),
                                  ("Known limits", card.limits, "no limits")]:
    st.header(heading)
    if section:
        show(section)
    else:
        st.info(f"The model card records {missing}.")

if card.training:
    with st.expander("Training run"):
        show(card.training)
