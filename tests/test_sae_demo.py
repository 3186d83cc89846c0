"""The shipped demo SAE against the demo world's ground truth (run with -s to see the tables).

Reproduce the SAE with the command in docs/sae.md (The shipped demo SAE); `lvlm-studio sae eval --concepts
--ablate red` prints the same tables on more scenes.
"""

from __future__ import annotations

import pytest

from lvlm_studio.core.plugin.jobs import run_job


@pytest.fixture(scope="module")
def demo_sae():
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.shipped import demo_sae_path

    return load_coder(demo_sae_path())


def test_the_demo_sae_explains_most_of_the_variance_and_keeps_the_answers(demo_model, demo_sae):
    from lvlm_studio.demo.evaluate import heldout_examples
    from lvlm_studio.sae.evaluate import evaluate_coder, format_evaluations

    examples = [(s.image, e.prompt, e.answer) for s, e in heldout_examples(20, "caption")]
    evaluation = run_job(evaluate_coder(demo_model, demo_sae, examples, len(examples)))
    print("\n" + format_evaluations([("demo SAE", evaluation)]))
    assert evaluation.explained_variance >= 0.9
    assert evaluation.ce_recovered >= 0.9


@pytest.fixture(scope="module")
def concepts(demo_model, demo_sae):
    from lvlm_studio.sae.demo import concept_table

    return run_job(concept_table(demo_model, demo_sae, n_select=100, n_heldout=100))


def test_every_colour_and_shape_has_a_feature_that_finds_its_patches(demo_sae, concepts):
    from lvlm_studio.sae.demo import WORDS, format_concept_table

    print("\n" + format_concept_table(concepts, demo_sae))
    assert [r.word for r in concepts] == list(WORDS)
    assert min(r.heldout_auroc for r in concepts) >= 0.9
    assert all(r.runner_up not in (-1, r.feature) and 0 <= r.runner_up_heldout_auroc <= 1 for r in concepts)


def test_ablating_the_red_feature_changes_answers_about_red_objects_only(demo_model, demo_sae, concepts):
    """The shipped coder is a Matryoshka SAE, whose first features hold whole concepts: zeroing the
    best red feature turns most answers about red objects to another colour, and leaves answers
    about objects of other colours as they were (the control). With a plain SAE the same edit
    changed nothing: "red" was split over dozens of narrower features (docs/sae.md, ablation table)."""
    from lvlm_studio.sae.demo import ablation_test

    red = next(r.feature for r in concepts if r.word == "red")
    ablated = run_job(ablation_test(demo_model, demo_sae, {red: 0.0}, "red", n=25))
    control = run_job(ablation_test(demo_model, demo_sae, {red: 0.0}, "green", n=12))
    for colour, result in (("red", ablated), ("green", control)):
        print(f"\nfeature {red} x 0, {colour} objects: answer changed in {result.changed}/{result.scenes} scenes "
              f"({result.fraction:.0%}); p(colour word) {result.p_before:.4f} -> {result.p_after:.4f}; "
              f"e.g. {result.examples[:2]}")
    assert ablated.fraction > 0.5 and ablated.p_after < 0.5 * ablated.p_before
    assert all(after != before for _, _, before, after in ablated.examples)
    assert control.fraction < 0.2
