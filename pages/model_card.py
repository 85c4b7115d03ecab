"""Model card: everything about the shipped model, read from weights/model_card.json (never repeated here)."""
from typing import Any

import streamlit as st

from webapp.model import card as model_card
from webapp.tables import breakdown_rows, confusion_table, is_estimates, metric_rows
from webapp.wording import METRIC_TITLES, class_title

card = model_card()


def title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def heading(key: str, depth: int) -> None:
    st.markdown(f"{'#' * min(4 + depth, 6)} {title(key)}")


def scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and not isinstance(v, (dict, list))}


def facts_list(facts: dict) -> None:
    """Key-value facts as a list: long values (the architecture, a protocol) wrap instead of being cut."""
    st.markdown("\n".join(f"- **{title(k)}**: {v}" for k, v in facts.items()))


def show(obj: Any, depth: int = 0) -> None:
    """Render a card section whatever its nesting: a metrics report as a table with CIs (then its
    confusion matrix and per-source breakdown), groups of reports (per source, one row per
    held-out source) as one row per group, lists of limits as bullets, the rest as facts."""
    if is_estimates(obj):
        st.dataframe(metric_rows(obj), hide_index=True)
        facts = {k: v for k, v in scalars(obj).items() if k not in METRIC_TITLES}
        if facts:
            st.caption(" · ".join(f"{title(k)}: {v:.4g}" if isinstance(v, float) else f"{title(k)}: {v}"
                                  for k, v in facts.items()))
        for k, v in obj.items():
            if k != "ci" and isinstance(v, (dict, list)) and v:
                heading(k, depth)
                if k == "confusion":
                    st.dataframe(confusion_table(v, card.positive_class))
                else:
                    show(v, depth + 1)
        return
    if isinstance(obj, dict) and obj and all(is_estimates(v) for v in obj.values()):
        st.dataframe(breakdown_rows(obj, card.positive_class), hide_index=True)
        return
    if isinstance(obj, list) and obj and all(is_estimates(v) for v in obj):
        name = next((k for k, v in obj[0].items() if isinstance(v, str)), None)  # e.g. "held_out"
        groups = {str(d.get(name, i)): d for i, d in enumerate(obj)}
        st.dataframe(breakdown_rows(groups, card.positive_class, key=title(name) if name else "group"), hide_index=True)
        return
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) and v and v == scalars(v) for v in obj.values()):
        columns = list(dict.fromkeys(c for v in obj.values() for c in v))   # e.g. films per source and class
        st.dataframe([{"": k, **{c: v.get(c, 0) for c in columns}} for k, v in obj.items()], hide_index=True)
        return
    if isinstance(obj, dict):
        if facts := scalars(obj):
            facts_list(facts)
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                heading(k, depth)
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
facts_list({
    "Network": card.architecture,
    "Input": card.describe_input(),
    "Normalisation": f"mean {card.mean}, std {card.std}",
    "Classes": ", ".join(class_title(c) for c in card.class_names),
    "Decision": f"{class_title(card.positive_class)} vs not",
    "Calibration": f"temperature scaling, T = {card.temperature:.3f}",
    "Weights": f"{card.weights_file} (sha256 {card.weights_sha256[:16]}…)",
})

st.header("Decision threshold")
st.markdown(f"A film is called **positive for a {class_title(card.positive_class)} pattern** when its "
            f"calibrated probability is at least **{card.threshold:.3f}**.")
st.caption(f"How it was chosen: {card.threshold_rule}")

for header, section, missing in [("Training data and sources", card.data, "no training data"),
                                  ("Performance", card.metrics, "no metrics yet"),
                                  ("Known limits", card.limits, "no limits")]:
    st.header(header)
    if section:
        show(section)
    else:
        st.info(f"The model card records {missing}.")

if card.training:
    with st.expander("Training run"):
        show(card.training)
