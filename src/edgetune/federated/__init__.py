"""Federated fine-tuning on Flower: a ServerApp and a ClientApp that wrap the same `Method.step`
as centralized training and ship only the trainable state.

task.py (model, data, local steps), client_app.py / server_app.py (the Flower apps),
strategies.py (Flower strategies + accounting and validation), payload.py (codecs, MeZO
seeds), ledger.py (bytes, times, checkpoints, report), network.py (link profiles),
partition.py (IID / Dirichlet splits), simulate.py and deploy.py (the two ways to run).
"""
