"""Differential-privacy accounting for the parameter server's central DP (``[privacy]``).

:mod:`~tdxfl.privacy.accounting` implements the engine's ``PrivacyAccountant`` with Google's
``dp-accounting`` library and calibrates a noise multiplier to a target epsilon.
"""
