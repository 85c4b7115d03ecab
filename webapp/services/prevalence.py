"""The prevalence this site screens at, as the operator set it: what the result view's PPV and NPV are computed at.

$COVIDXR_PREVALENCE, else `prevalence` in .streamlit/secrets.toml ("0.05" or "5%"), else
covidxr.predictive.DEFAULT_PREVALENCE (10%: deliberately modest, far below the ~48% COVID-19 share of the films the
model was validated on, so that the PPV shown is not the flattering one). A setting that does not parse is reported
and the default used, never a silent guess.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from covidxr.predictive import DEFAULT_PREVALENCE, parse_prevalence

ENV = "COVIDXR_PREVALENCE"


@dataclass(frozen=True)
class Prevalence:
    value: float
    source: str              # how the page names it: "this server's setting" / "the default: ..."
    error: str | None = None  # a setting that did not parse, and why


def site_prevalence() -> Prevalence:
    raw, where = os.environ.get(ENV), f"${ENV}"
    if raw is None:
        import streamlit as st
        from streamlit.errors import StreamlitSecretNotFoundError

        try:
            raw, where = st.secrets.get("prevalence"), "secrets.toml `prevalence`"
        except (FileNotFoundError, StreamlitSecretNotFoundError):
            raw = None
    default = Prevalence(DEFAULT_PREVALENCE, f"the default; the operator sets the site's as {ENV}")
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return Prevalence(parse_prevalence(raw), "this server's setting for the site")
    except ValueError as e:
        return Prevalence(default.value, default.source, f"{where}: {e}")
