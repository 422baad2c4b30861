"""Schedulers of diffusers' arithmetic whose steps do not make the host wait for the GPU."""

from __future__ import annotations

import diffusers
import torch


class UniPCMultistepScheduler(diffusers.UniPCMultistepScheduler):
    """diffusers' UniPC, the same operations, with each step's scalars computed where its sigmas are: the CPU.

    diffusers' UniPC copies the sigmas it needs to the sample's device one by one and computes the step's
    coefficients (log-SNRs, h, the B(h) terms, rho) there; each copy of a CPU tensor to a GPU, and
    ``torch.linalg.solve``'s check for a singular matrix, blocks the host until the GPU has finished all the work
    queued before it (the UNet's step), so the GPU then idles while Python runs the rest of the step and queues the
    next. Here those scalar operations run on the CPU, and the coefficients that the sample-sized operations take
    are filled in on the device from their host values (``_on_device``), as diffusers has them there. On a CPU the
    steps are diffusers', bit for bit (tests); on a GPU they differ only where the CPU's float32 log, expm1 or power
    rounds otherwise than the GPU's. The one wait left is diffusers' own lookup of a call's first timestep
    (``index_for_timestep``, where no begin index is set), once a call. Same class name: a saved
    ``scheduler_config.json`` names diffusers' class.
    """

    def _step_scalars(self, index_t: int, index_s0: int, earlier: list[int]):
        """alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, B_h, rks (one per earlier sigma index), R and b, as
        diffusers' update computes them: CPU tensors."""
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[index_t])
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[index_s0])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = lambda_t - lambda_s0
        rks = []
        for si in earlier:
            alpha_si, sigma_si = self._sigma_to_alpha_sigma_t(self.sigmas[si])
            lambda_si = torch.log(alpha_si) - torch.log(sigma_si)
            rks.append((lambda_si - lambda_s0) / h)
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)  # h\phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        if self.config.solver_type == "bh1":
            B_h = hh
        elif self.config.solver_type == "bh2":
            B_h = torch.expm1(hh)
        else:
            raise NotImplementedError()
        powers = torch.stack([*rks, torch.ones(())])
        R, b, factorial_i = [], [], 1
        for i in range(1, len(earlier) + 2):
            R.append(torch.pow(powers, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, B_h, rks, torch.stack(R), torch.stack(b)

    def _update(self, x, m0, scalars, residual):
        """The step from ``x`` with the last model output ``m0`` and the higher-order ``residual`` (or 0)."""
        alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1, B_h = scalars[:6]
        if self.predict_x0:
            coefficients = sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * B_h
        else:
            coefficients = alpha_t / alpha_s0, sigma_t * h_phi_1, sigma_t * B_h
        x_coef, m0_coef, residual_coef = (_on_device(c, x) for c in coefficients)
        x_t_ = x_coef * x - m0_coef * m0
        return (x_t_ - residual_coef * residual).to(x.dtype)

    def _differences(self, rks, m0):
        """diffusers' D1s: (m_i - m0) / r_i for each earlier model output m_i, stacked on dim 1."""
        outputs = self.model_outputs
        return torch.stack(
            [(outputs[-(i + 1)] - m0) / _on_device(rk, m0) for i, rk in enumerate(rks, 1)], dim=1
        )

    def multistep_uni_p_bh_update(self, model_output, *args, sample=None, order=None, **kwargs):
        if args or kwargs or sample is None or order is None or self.solver_p:
            return super().multistep_uni_p_bh_update(
                model_output, *args, sample=sample, order=order, **kwargs
            )
        earlier = [self.step_index - i for i in range(1, order)]
        scalars = self._step_scalars(self.step_index + 1, self.step_index, earlier)
        rks, R, b = scalars[6:]
        m0 = self.model_outputs[-1]
        residual = 0
        if earlier:
            D1s = self._differences(rks, m0)
            if order == 2:  # diffusers' simplified version
                rhos_p = torch.ones(1, dtype=sample.dtype, device=sample.device) * 0.5
            else:
                rhos_p = _on_device(torch.linalg.solve(R[:-1, :-1], b[:-1]), sample, sample.dtype)
            residual = torch.einsum("k,bkc...->bc...", rhos_p, D1s)
        return self._update(sample, m0, scalars, residual)

    def multistep_uni_c_bh_update(self, this_model_output, *args, last_sample=None, this_sample=None, order=None,
                                  **kwargs):  # fmt: skip
        if args or kwargs or last_sample is None or this_sample is None or order is None:
            return super().multistep_uni_c_bh_update(this_model_output, *args, last_sample=last_sample,
                                                     this_sample=this_sample, order=order, **kwargs)  # fmt: skip
        earlier = [self.step_index - (i + 1) for i in range(1, order)]
        scalars = self._step_scalars(self.step_index, self.step_index - 1, earlier)
        rks, R, b = scalars[6:]
        m0 = self.model_outputs[-1]
        if order == 1:  # diffusers' simplified version
            rhos_c = torch.ones(1, dtype=last_sample.dtype, device=this_sample.device) * 0.5
        else:
            rhos_c = _on_device(torch.linalg.solve(R, b), last_sample, last_sample.dtype)
        corr_res = 0
        if earlier:
            D1s = self._differences(rks, m0)
            corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], D1s)
        return self._update(last_sample, m0, scalars, corr_res + rhos_c[-1] * (this_model_output - m0))


def _on_device(values: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """CPU ``values`` on ``like``'s device, in ``dtype`` (one rounding, as ``.to(dtype)``) or their own, filled in
    from host numbers: copying a CPU tensor to a GPU waits for the GPU (unless from pinned memory), a fill does not.
    (A 0-dim CPU tensor as an operand would not wait either, but a GPU kernel takes it at float32, where it takes a
    0-dim tensor of its own device in the other operand's dtype, fp16 or bf16, as diffusers' coefficients are.)"""
    dtype = dtype or values.dtype
    if values.dim() == 0:
        return torch.full((), values.item(), dtype=dtype, device=like.device)
    return torch.stack([torch.full((), v, dtype=dtype, device=like.device) for v in values.tolist()])
