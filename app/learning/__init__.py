"""The learning core, without Flower: a node's LeRobot dataset (data), the SmolVLA policy (model), local training
with FedProx's proximal term (train), held-out evaluation (evaluate), one node's learner (learner: a policy, its data
and processors, and a round's training on them), checkpoints in LeRobot format (checkpoint), run outputs and
charts (report), the Hub (hub), centralized training (standalone), prediction on an episode (predict) and the
embedded tiny model and datasets (embedded). Imports app.common only, and never flwr."""
