"""Model card, for clinicians first: intended use, who it must not be used on, what to expect at a new
hospital (unseen-hospital figures first, then: validate locally), the headline figures with CIs; the
engineering detail in expanders. Every number is read from weights/model_card.json (webapp.views.card_view)."""
import streamlit as st

from webapp.views import card_view as cv
from webapp.session import site_session
from webapp.views import site_view
from webapp.views.literal import literal
from webapp.services.model import card as model_card
from webapp.views.grids import fitted_table as table
from webapp.views.tables import breakdown_rows, confusion_table, metric_rows
from webapp.views.wording import METRIC_HELP, METRIC_TITLES, class_title, fmt_threshold
from webapp.views import icons

card = model_card()
metrics = card.metrics or {}


st.title(f"Model card · {card.name}")
st.info(card.intended_use, icon=icons.DISCLAIMER)

st.header("Who it must not be used on")
st.error("\n".join(f"- {l}" for l in cv.must_not_use(card)) or "The card names no exclusion.", icon=icons.ERROR)

st.header("What to expect at your hospital")
st.markdown(cv.new_hospital_text(card))
st.markdown("**Validate it locally first**: score a labelled folder of your own films (COVID-19 and other) on the "
            "Batch evaluation page, and read its sensitivity and specificity before relying on any result.")
st.page_link("pages/evaluate.py", label="Validate on your films: Batch evaluation", icon=icons.BATCH)
if held := cv.held_out_rows(card):
    st.markdown("**Each source left out of training, scored afterwards** (95% CIs; a source with one class "
                "has no AUC)")
    table(held)
if adapted := cv.site_adaptation_rows(card):
    st.markdown("**A site profile on a source it has never seen** (measured: fitted on half of the source's "
                "patients, scored on the other half; 95% CIs)")
    table(adapted)
    st.caption(cv.site_adaptation_text(card))

st.header("How it decides")
st.markdown(cv.decision_text(card))
st.caption(f"How the operating point was chosen: {card.threshold_rule}")
if (profile := site_session.active_profile()) is not None:
    st.subheader(f"The site profile in use: {literal(profile.name)}")
    st.markdown(f"In this session the Screen and Batch evaluation pages decide at this profile's operating point, "
                f"**{fmt_threshold(profile.threshold)}**, not the shipped one. Fitted {profile.created[:10]} on "
                f"{site_view.films_text(profile, card.positive_class)}. "
                "Both rows on the site's films, cross-validated (95% CIs in brackets):")
    table(site_view.figure_rows(profile))
    with st.expander("Engineering detail: how the profile was fitted"):
        st.caption(f"Method: {site_view.method_title(profile.method)}.")
    if rough := site_view.rough_text(profile):
        st.caption(rough)

if validation := metrics.get("validation"):
    st.header("Headline figures (optimistic)")
    st.markdown("On held-out **patients of the training sources**: the same hospitals and scanners as in "
                "training, so these figures overstate what to expect elsewhere.",
                help="\n\n".join(f"**{METRIC_TITLES[k]}**: {v}" for k, v in METRIC_HELP.items()))
    table(metric_rows(validation))
    if validation.get("confusion"):
        st.dataframe(confusion_table(validation["confusion"], card.positive_class))

st.header("Known limits")
st.markdown("\n".join(f"- {l}" for l in card.limits) or "The card records no limits.")

st.header("Engineering detail")
with st.expander("Architecture and input"):
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in {
        "Network": card.architecture, "Input": card.describe_input(),
        "Classes": ", ".join(class_title(c) for c in card.class_names),
        "Calibration": f"temperature scaling, T = {card.temperature:.3f}",
        "Weights": f"{card.weights_file} (sha256 {card.weights_sha256[:12]}…)"}.items()))
    if card.ood.get("rule"):
        st.markdown(f"**Input check (not a frontal chest radiograph)**: {card.ood['rule']}")
with st.expander("Training data"):
    if rows := cv.films_per_source(card):
        table(rows)
    data = card.data or {}
    st.caption(" · ".join(str(x) for x in (f"{data.get('n_train')} training films" if data.get("n_train") else "",
                                           f"{data.get('n_validation')} validation films" if data.get("n_validation") else "",
                                           f"split: {data['split']}" if data.get("split") else "") if x))
if validation and validation.get("per_source"):
    with st.expander("Validation per source"):
        table(breakdown_rows(validation["per_source"], card.positive_class))
pooled = metrics.get("leave_one_source_out_pooled") or {}
if pooled:
    with st.expander("Left-out sources pooled"):
        table(breakdown_rows({k.replace("_", " "): v for k, v in pooled.items() if v}, card.positive_class,
                             key="pool"))
        whats = {v.get("what") for v in pooled.values() if v and v.get("what")}
        for w in whats:
            st.caption(w)
if ablations := cv.ablation_rows(card):
    with st.expander("Ablations: what was tried"):
        table(ablations)
        if metrics.get("protocol"):
            st.caption(metrics["protocol"])
if facts := cv.training_facts(card):
    with st.expander("Training run"):
        st.markdown("\n".join(f"- **{k}**: {v}" for k, v in facts.items()))
