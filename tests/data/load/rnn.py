"""Recurrent models: a time-major LSTM classifier and a word language model whose forward
takes a hidden state."""

import torch
from torch import nn


class SeqClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(10, 20)  # time-major: (T, B, 10)
        self.fc = nn.Linear(20, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[-1])


class RNNModel(nn.Module):
    def __init__(self, ntoken=50, nhid=16, nlayers=2):
        super().__init__()
        self.nlayers, self.nhid = nlayers, nhid
        self.encoder = nn.Embedding(ntoken, nhid)
        self.rnn = nn.LSTM(nhid, nhid, nlayers)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return self.decoder(output), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
