"""Training: everything that makes the shipped model, its out-of-distribution statistics and its card.

Inference never imports this package. What lives where:

- data: the manifest, the patient-grouped split, the classes and seeds
- segmenter: the lung segmenter and its lung-mask set
- recipe: `Recipe` (how one network is made: its input View, sizes, optimiser, penalties) and `VIEWS`
- cache: every film prepared once per input, as uint8 arrays
- augment: the shared affine warp, radiograph-minded augmentation, JPEG re-encoding
- penalties: the source adversary (gradient reversal) and the lung-attention penalty
- loop: sampling, `fit` with checkpoints and early stopping, inference on the cache, temperature
- orientation: the training side of the orientation net (examples, fit)
- experiments: the shipped recipe, folds, leave-one-source-out, ensembles of folds, ablations
- stages: `main`, the stages of `python -m covidxr train`, in order
- card_writer: the model card from the stored results

Every stage checkpoints into a work directory so that a long run on two CPU cores survives the end of a
session: rerun the same command and it resumes where it stopped. Measured results of earlier recipes are
in docs/ablation-notes.md, not here.
"""
