"""Reinforcement-learning building blocks.

``foresight.rl.mdp`` is the finite-MDP toolkit shared by the self-predictive (BYOL-Π), SVD
representation and geometric-horizon-model systems; it is re-exported here. System modules such as
``foresight.rl.self_predictive`` are imported by their full path.
"""

from foresight.rl.mdp import (
    DTYPE,
    FOUR_ROOMS_LAYOUT,
    GRID_ACTION_NAMES,
    GRID_ACTIONS,
    FiniteMDP,
    FiniteMDPEnv,
    GridWorld,
    ValueIterationResult,
    alignment,
    chain_mdp,
    eig_sorted,
    four_rooms,
    greedy_policy,
    gridworld,
    orthonormal_basis,
    policy_evaluation,
    policy_reward,
    policy_transition,
    principal_angles,
    q_values,
    random_dirichlet,
    random_doubly_stochastic,
    random_mdp,
    random_symmetric_transition,
    random_transition_matrix,
    reverse_transition,
    sample_mdp_transitions,
    sample_transitions,
    stationary_distribution,
    successor_representation,
    top_eigvecs,
    top_singular_vectors,
    uniform_policy,
    value_iteration,
)

__all__ = [
    "DTYPE", "FOUR_ROOMS_LAYOUT", "GRID_ACTIONS", "GRID_ACTION_NAMES", "FiniteMDP", "FiniteMDPEnv", "GridWorld",
    "ValueIterationResult", "alignment", "chain_mdp", "eig_sorted", "four_rooms", "greedy_policy", "gridworld",
    "orthonormal_basis", "policy_evaluation", "policy_reward", "policy_transition", "principal_angles",
    "q_values", "random_dirichlet", "random_doubly_stochastic", "random_mdp", "random_symmetric_transition",
    "random_transition_matrix", "reverse_transition", "sample_mdp_transitions", "sample_transitions",
    "stationary_distribution", "successor_representation", "top_eigvecs", "top_singular_vectors",
    "uniform_policy", "value_iteration",
]
