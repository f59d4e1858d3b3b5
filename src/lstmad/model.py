"""The network: a multi-layer LSTM with a fully connected head.

The model forecasts the next sample from the samples so far. It deliberately
has no skip connection from the last input to the output: a network that must
produce the forecast from its own state reproduces only what it learned as
normal, so a sustained shift (a CPU pinned at 100 % for twenty minutes) keeps a
large error for as long as it lasts, where a ``last value + correction`` model
would flag only the first minute. Forecasting, rather than reconstructing a
window, lets ``serve`` carry the LSTM state per entity and advance it by one
sample per cycle (see :mod:`lstmad.streaming`).

The module receives its sizes and does no I/O and no device choice.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LSTMForecaster"]

State = tuple[torch.Tensor, torch.Tensor]


class LSTMForecaster(nn.Module):
    """``forward(x)`` maps (batch, time, features) to next-step forecasts for every position."""

    def __init__(self, n_features: int, hidden: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_features = n_features
        self.hidden = hidden
        self.layers = layers
        self.lstm = nn.LSTM(
            n_features,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_features))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Forecasts of ``x[:, t + 1]`` for every ``t``, and the final LSTM state."""
        out, new_state = self.lstm(x, state)
        return self.head(out), new_state

    def forecast_last(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The forecast after the last sample of ``x`` only, and the final LSTM state.

        Equal to ``forward(x)[0][:, -1]`` without running the head over every
        position: what recomputing a window needs.
        """
        out, new_state = self.lstm(x, state)
        return self.head(out[:, -1]), new_state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Advance every row by one sample: ``x`` is (batch, features)."""
        out, new_state = self.lstm(x.unsqueeze(1), state)
        return self.head(out[:, 0]), new_state
