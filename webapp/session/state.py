"""Every key this app keeps in `st.session_state`, and `user_state` for the per-session objects.

Streamlit keeps `st.session_state` per browser session: two clinicians never see each other's films,
heatmaps or batches. Widget keys live here too, since a widget's value is read and written under its
key (the tests drive the widgets by these keys). Per-film and per-row widgets get their key from a
function of the film's content key or the row's index, so that each keeps its own value.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import streamlit as st

T = TypeVar("T")

# ---------------------------------------------------------------- per-session objects
BATCH = "batch"                # webapp.session.batch.Batch: the session's last batch evaluation
FILMS = "films"                # LRU of decoded films, by content and name
EXPLANATIONS = "explanations"  # LRU of Grad-CAM explanations, by content
THUMBNAILS = "thumbnails"      # LRU of the review gallery's thumbnails, by film path
REVIEW_OPEN = "review_open"    # the batch row opened large on the review page
SITE_ACTIVE = "site_active"    # the session's site profile: its folder in the profile folder (None: shipped model)
SITE_VERSION = "site_version"  # the version of that profile the session decides with (webapp.session.site_session)
SITE_FITTED = "site_fitted"    # Site profiles page: the profile fitted from the last batch, kept in this session only
                               # until a site admin adopts it {folder, profile, skipped}
BATCH_SCORED_BY = "batch_scored_by"  # how the last batch was scored: {"site": name or None, "profile", "line", "threshold"}
DISPLAY_IMAGES = "display_images"  # LRU of the result view's JPEG bytes, by film, colouring and opacity (webapp.views.view)
CLUSTER_RUN = "cluster_run"    # Batch evaluation page: the id of the cluster run open in this session (also ?run=ID)
BATCH_RUN = "batch_run"        # (run id, state, films scored) of the cluster run BATCH was last built from

# ---------------------------------------------------------------- widgets: Screen a film
SCREEN_UPLOAD = "screen_upload"
SCREEN_SAMPLE = "screen_sample"
SITE_SWITCH = "site_switch"    # "switch to the newer version" of the session's profile
SITE_SELECT = "site_select"    # the operating point in use: "Shipped model" or a saved site profile

# ---------------------------------------------------------------- widgets: Batch evaluation
EVAL_SOURCE = "eval_source"
EVAL_UPLOAD = "eval_upload"
EVAL_LABEL = "eval_label"
EVAL_FOLDER = "eval_folder"
EVAL_RUN = "eval_run"
EVAL_THRESHOLD = "eval_threshold"
EVAL_RESET = "eval_reset"
EVAL_CSV = "eval_csv"
EVAL_JSON = "eval_json"
EVAL_INCLUDE_REFUSED = "eval_include_refused"
SITE_NAME = "site_name"              # fit a site profile from the batch: its name (and folder)
SITE_OVERWRITE = "site_overwrite"    # replace the saved profile of that name (one box per name: site_overwrite())
SITE_FIT = "site_fit"
SITE_TARGET = "site_target"          # the fitted profile's sensitivity to aim at (webapp.views.site_choice)
SITE_OVERRIDE = "site_override"      # adopt a profile not offered anyway: the reason, recorded
SITE_SAVE = "site_save"              # adopt the fitted profile (saved as a new version)
SITE_SAVED = "site_saved"            # the profile just adopted {folder, version, line}
CLUSTER_RESUME = "cluster_resume"  # start an interrupted or failed cluster run again where it stopped
CLUSTER_OPEN = "cluster_open"      # the list's Open button of one cluster run (one per run: cluster_open())
# The batch form as the user left it: Streamlit drops the state of widgets that are not drawn (another
# page is open), so these are copied under KEPT_PREFIX and restored when the page is drawn again.
EVAL_FORM = (EVAL_SOURCE, EVAL_LABEL, EVAL_FOLDER)
KEPT_PREFIX = "kept_"

# ---------------------------------------------------------------- widgets: Heatmap review
REVIEW_OUTCOMES = "review_outcomes"
REVIEW_SORT = "review_sort"
REVIEW_PAGE = "review_page"
REVIEW_CLOSE = "review_close"
REVIEW_DIALOG = "review_dialog"      # the batch row shown in the review dialog (next/previous move it)
REVIEW_PREV = "review_prev"
REVIEW_NEXT = "review_next"
REVIEW_HEATMAPS = "review_heatmaps"  # heatmap thumbnails in the gallery
WORKLIST_STUDY = "worklist_study"    # the study opened on the Worklist page


def review_open_button(row: int) -> str:
    """The gallery's Open button of a batch row."""
    return f"{REVIEW_OPEN}_{row}"


# ---------------------------------------------------------------- widgets: one result (webapp.views.view)

def opacity_slider(film_key: str) -> str:
    """The heatmap opacity of one film (by content), so that each shown film keeps its own."""
    return f"opacity_{film_key}"


def overlay_download(film_key: str) -> str:
    return f"download_{film_key}"


def site_overwrite(folder: str) -> str:
    """The Batch page's "replace the saved profile" box for one name, so that a tick never carries over to another."""
    return f"{SITE_OVERWRITE}_{folder}"


def cluster_open(run_id: str) -> str:
    """The Batch page's Open button of one cluster run in the list of runs."""
    return f"{CLUSTER_OPEN}_{run_id}"


def restore_form(keys: tuple[str, ...]) -> None:
    """Before a page draws its form: give back the values its widgets had when the user left the page."""
    for k in keys:
        if k not in st.session_state and KEPT_PREFIX + k in st.session_state:
            st.session_state[k] = st.session_state[KEPT_PREFIX + k]


def remember_form(keys: tuple[str, ...]) -> None:
    """After a page drew its form: keep copies of its widgets' values that outlive the widgets."""
    for k in keys:
        if k in st.session_state:
            st.session_state[KEPT_PREFIX + k] = st.session_state[k]


def user_state(name: str, factory: Callable[[], T]) -> T:
    """This session's own object under `name`, created on first use."""
    if name not in st.session_state:
        st.session_state[name] = factory()
    return st.session_state[name]
