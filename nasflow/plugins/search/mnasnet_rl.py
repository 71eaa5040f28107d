"""`mnasnet` search strategy: MnasNet's reinforcement-learning controller (Tan et al. 2019).

An LSTM policy emits the space's decisions one at a time (each step sees the choice made at the
previous one), so it can learn how decisions interact; `policy: factorized` replaces it with one
independent categorical per decision. The reward is the search score, which with
`objectives.reward: mnasnet` is MnasNet's ACC x (LAT/T)^w on the objective device. The policy is
trained after each batch with PPO's clipped objective (as in the paper) or with REINFORCE, both
against an exponential moving-average baseline, plus an entropy bonus that keeps it exploring.

Sampling draws from a torch generator seeded by the run seed, and training is deterministic on
the CPU, so a resumed run (which replays its recorded scores) proposes exactly what it did before.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import CandidateResult, Genome, PluginOptions, SearchStrategy


class MnasNetOptions(PluginOptions):
    policy: Literal["lstm", "factorized"] = Field("lstm", description="LSTM over the decisions, or independent per decision")
    algorithm: Literal["ppo", "reinforce"] = Field("ppo", description="policy update: PPO (the paper) or REINFORCE")
    hidden_size: int = Field(64, ge=4, description="LSTM hidden and choice-embedding width")
    lr: float | None = Field(
        None, gt=0, description="Adam learning rate; default 0.003 for lstm, 0.1 for factorized (its logits are the parameters)"
    )
    ppo_epochs: int = Field(4, ge=1, description="PPO: passes over each batch")
    clip: float = Field(0.2, gt=0, lt=1, description="PPO: ratio clipping epsilon")
    entropy_weight: float = Field(1e-3, ge=0, description="weight of the entropy bonus")
    baseline_decay: float = Field(0.95, ge=0, lt=1, description="moving-average baseline decay")
    failed_reward: float = Field(0.0, description="reward of a candidate that failed (no score)")


DEFAULT_LR = {"lstm": 0.003, "factorized": 0.1}
"""Picked on a synthetic fitness (tests/test_search_mnasnet_rl.py): higher rates collapse the LSTM
policy onto an early good genome; the factorized policy's raw logits need larger steps."""


class _Policy:
    """The controller network; built lazily so that importing the plugin does not import torch."""

    def __init__(self, sizes: list[int], options: MnasNetOptions, seed: int):
        import torch
        from torch import nn

        torch.manual_seed(seed)  # parameter initialisation; sampling has its own generator
        self.torch, self.sizes, self.options = torch, sizes, options
        hidden = options.hidden_size
        self.modules = nn.ModuleDict()
        if options.policy == "lstm":
            self.modules["cell"] = nn.LSTMCell(hidden, hidden)
            self.modules["start"] = nn.Embedding(1, hidden)
            self.modules["embed"] = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
            self.modules["heads"] = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        else:
            self.modules["logits"] = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)
        lr = options.lr if options.lr is not None else DEFAULT_LR[options.policy]
        self.optimizer = torch.optim.Adam(self.modules.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)

    def _initial_state(self, n: int):
        if self.options.policy == "factorized":
            return None
        zeros = self.torch.zeros(n, self.options.hidden_size)
        return (zeros, zeros.clone())

    def _logits(self, step: int, n: int, state, previous):
        """Logits of decision `step` for `n` genomes (n x choices) and the LSTM state after it."""
        if self.options.policy == "factorized":
            return self.modules["logits"][step].expand(n, -1), state
        torch = self.torch
        if previous is None:
            x = self.modules["start"](torch.zeros(n, dtype=torch.long))
        else:
            x = self.modules["embed"][step - 1](previous)
        state = self.modules["cell"](x, state)
        return self.modules["heads"][step](state[0]), state

    def _walk(self, n: int, actions=None):
        """Run the policy over the decisions: sample (actions None) or score given actions.
        Returns (actions n x decisions, log-probabilities, mean entropy per decision)."""
        torch = self.torch
        state, previous, picks = self._initial_state(n), None, []
        logp, entropy = torch.zeros(n), torch.zeros(n)
        for step in range(len(self.sizes)):
            logits, state = self._logits(step, n, state, previous)
            log_probs = torch.log_softmax(logits, dim=-1)
            if actions is None:
                pick = torch.multinomial(log_probs.exp(), 1, generator=self.generator).squeeze(1)
            else:
                pick = actions[:, step]
            logp = logp + log_probs.gather(1, pick[:, None]).squeeze(1)
            entropy = entropy - (log_probs.exp() * log_probs).sum(-1)
            picks.append(pick)
            previous = pick
        return torch.stack(picks, dim=1), logp, entropy / max(1, len(self.sizes))

    def sample(self, n: int) -> tuple[list[Genome], list[float]]:
        """`n` genomes from the current policy and the log-probability of each."""
        with self.torch.no_grad():
            actions, logp, _ = self._walk(n)
        return [tuple(int(v) for v in row) for row in actions], [float(v) for v in logp]

    def evaluate(self, genomes: list[Genome]):
        """Log-probabilities (with gradients) of given genomes and the entropy per decision along them."""
        actions = self.torch.tensor(genomes, dtype=self.torch.long)
        _, logp, entropy = self._walk(len(genomes), actions)
        return logp, entropy

    def update(self, genomes: list[Genome], old_logp: list[float], advantages: list[float]) -> float:
        """One policy update on a batch; returns the policy's mean entropy per decision after it."""
        torch, opt = self.torch, self.options
        adv = torch.tensor(advantages, dtype=torch.float32)
        old = torch.tensor(old_logp, dtype=torch.float32)
        for _ in range(opt.ppo_epochs if opt.algorithm == "ppo" else 1):
            logp, entropy = self.evaluate(genomes)
            if opt.algorithm == "ppo":
                ratio = torch.exp(logp - old)
                objective = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - opt.clip, 1 + opt.clip) * adv)
            else:
                objective = logp * adv
            loss = -(objective.mean() + opt.entropy_weight * entropy.mean())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return float(self.evaluate(genomes)[1].mean())


class MnasNetController(SearchStrategy):
    """MnasNet's RL controller over the space's decisions (any space), trained on the search score."""

    name = "mnasnet"
    description = "MnasNet RL controller: LSTM policy over the space's decisions, PPO on ACC x (LAT/T)^w"
    Options = MnasNetOptions

    def __init__(self, options, space, seed):
        super().__init__(options, space, seed)
        self.seed = seed
        self._policy: _Policy | None = None
        self._pending: list[tuple[Genome, float]] = []  # (genome, log-prob when sampled), in ask order
        self.baseline: float | None = None
        self.history: list[dict[str, float]] = []  # per told batch: mean reward, baseline, entropy

    @property
    def policy(self) -> _Policy:
        if self._policy is None:
            self._policy = _Policy([len(d.choices) for d in self.space.decisions], self.options, self.seed)
        return self._policy

    def ask(self, n: int) -> list[Genome]:
        genomes, logp = self.policy.sample(n)
        self._pending = list(zip(genomes, logp))
        return genomes

    def tell(self, results: list[CandidateResult]) -> None:
        # A batch the budget cut short is told up to the cut; the rest of the proposals are dropped.
        asked, self._pending = self._pending[: len(results)], []
        rewards = [self.options.failed_reward if score is None else float(score) for _, score in results]
        if not rewards:
            return
        mean = sum(rewards) / len(rewards)
        if self.baseline is None:
            self.baseline = mean  # the first batch's mean starts the baseline
        advantages = [r - self.baseline for r in rewards]
        genomes = [tuple(g) for g, _ in results]
        if [g for g, _ in asked] == genomes:
            old = [lp for _, lp in asked]
        else:  # told genomes it did not propose (a warm start, a replay): score them under the current policy
            with self.policy.torch.no_grad():
                old = self.policy.evaluate(genomes)[0].tolist()
        entropy = self.policy.update(genomes, old, advantages)
        decay = self.options.baseline_decay
        self.baseline = decay * self.baseline + (1 - decay) * mean
        self.history.append({"mean_reward": mean, "baseline": self.baseline, "entropy": entropy})

    def step_log(self) -> dict[str, float]:
        return dict(self.history[-1]) if self.history else {}

    def max_entropy(self) -> float:
        """Mean entropy per decision of a uniform policy (where the controller starts, roughly)."""
        sizes = [len(d.choices) for d in self.space.decisions]
        return sum(math.log(n) for n in sizes) / max(1, len(sizes))


@hookimpl
def nasflow_search_strategies():
    return [MnasNetController]
