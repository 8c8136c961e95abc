"""Each figure's heading and caption: what is drawn and what to look for. Plain text with ``str.format`` fields
that :mod:`elbokit.report.sections` fills from the figure's data; a caption names only what its figure shows."""

from __future__ import annotations

#: Each figure's heading and one-line caption: what to look for.
CAPTIONS: dict[str, tuple[str, str]] = {
    "training": ("Training", "The bound should rise and flatten; a validation curve that turns down while training "
                 "still rises is overfitting; β shows the KL schedule."),
    "samples": ("Samples from p(z)", "Decoded means of z ~ p(z): blurry or repeated shapes say the decoder has not "
                "learnt the data, or that q(z) and the prior disagree."),
    "reconstructions": ("Reconstructions", "Images above the decoded mean of their q(z|x): lost detail is "
                        "distortion the latent code does not carry."),
    "traversals": ("Latent traversals", "Each row moves one latent (the most informative first, by KL) from -3 to 3 "
                   "with the others at 0: a row that does not change is a collapsed latent."),
    "feature-reconstructions": ("Reconstructions, feature by feature", "For the {m} features with the largest "
                                "variance over the points, each point's value (across) against its reconstruction "
                                "mean E[x_j | z = E_q z] (up): points on the diagonal are reconstructed; a flat "
                                "cloud (R² near 0) is a feature the latent code does not carry."),
    "mean-variance": ("Mean and variance of each gene", "For count data: each gene's mean and variance over the "
                      "cells in the data and in the posterior predictive (per cell, z ~ q(z|x), then x ~ p(x|z) at "
                      "the cell's own library), with the Poisson line var = mean. Overdispersion the model lacks "
                      "shows as genes whose predictive variance falls below the data's."),
    "posterior-predictive": ("Posterior-predictive check", "The data against {draws} draws x ~ p(x) from the model "
                             "(z ~ p(z), then x ~ p(x|z)): above, each feature's mean and standard deviation "
                             "(on the diagonal when the model matches the data); below, the marginals of the {m} "
                             "most variable features. A model marginal narrower, wider or shifted, or with mass "
                             "where the data have none, is misfit that a good average ELBO can hide."),
    "latent-space": ("Latent space", "The encoded points on {which}{colour}"),
    "manifold": ("Decoded manifold", "Decoded means over {which} at the prior's quantiles, the other latents at 0: "
                 "smooth change means a smooth decoder."),
    "kl-per-dim": ("Per-dimension KL", "KL(q(z_j|x) ‖ p(z_j)) per latent: latents near 0 carry no information "
                   "(posterior collapse); {active} of {d} are active."),
    "gaps": ("Where the bound loses", "From log p(x) down to the encoder's ELBO: the approximation gap is the "
             "family's, the amortization gap the encoder's; the last bar is the noise of a one-draw ELBO."),
    "iwae": ("log p(x) against k", "IWAE_k rises towards log p(x) as k grows; if it is still rising at the last k, "
             "or AIS or the refined proposal's estimate lies above the encoder's line, that importance-sampled "
             "log p(x) is short."),
    "pareto-k": ("Reliability of log p(x), point by point", "k̂ of each point's importance weights (Pareto-smoothed "
                 "importance sampling): below 0.5 its log p(x) is reliable, above {threshold} (the dashed line) its "
                 "error bar cannot be trusted and it is likely short; {over} of {n} points are above."),
    "worst-points": ("The points the model explains worst", "The {m} points with the lowest importance-sampled "
                     "log p(x), then the {m} with the largest gap log p(x) − ELBO, {how}. What they share "
                     "(outliers, a kind of data the model has not learnt) says where the model fails; a large gap "
                     "with a good reconstruction is the encoder's q losing, not the decoder. The table gives "
                     "their positions among the points (from 0); a point with k̂ above {threshold} has an "
                     "unreliable log p(x)."),
    "disentanglement": ("Disentanglement", "On {n} test points with known generative factors: MIG {mig}, DCI "
                        "disentanglement {d}, completeness {c}, informativeness {i}, FactorVAE score {fvae} (chance "
                        "{chance}). Each row moves the latent that carries one factor most (the largest I(z_j; v_k)) "
                        "from -3 to 3 with the others at 0: a disentangled model changes that factor alone, and two "
                        "factors on one latent share it. The table gives each factor's latent and MIG gap."),
    "disentanglement-beta": ("Disentanglement against β", "Each model of the sweep scored on its test codes: a "
                             "larger β is claimed to find the factors (Higgins et al. 2017), but the scores vary "
                             "with the seed as much as with β (Locatello et al. 2019)."),
    "rate-distortion": ("Rate and distortion", "One model per β (Alemi et al. 2018): each sits on its ELBO line "
                        "R + D = -ELBO; small β buys low distortion with a high rate."),
    "rate-distortion-one": ("Rate and distortion", "This model on the rate-distortion plane, with its ELBO line "
                            "R + D = -ELBO and -log p(x) below it; a β sweep (`elbokit sweep DIR --beta "
                            "0.25,0.5,1,2,4`) traces the curve."),
}  # fmt: skip
COLOURS = {
    "label": ", coloured by label: classes that separate are what the code has learnt.",
    "log_px": ", coloured by each point's importance-sampled log p(x): a region of low values is data the model "
              "explains poorly.",
    None: ": they should fill the prior's circles; a latent whose means all sit at 0 is collapsed.",
}  # fmt: skip
