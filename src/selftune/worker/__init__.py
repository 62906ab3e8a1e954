"""The worker: the process that runs jobs (training, exports, ...) while the server serves.

``process`` starts it as the server's child; ``loop`` takes jobs from the store; ``handlers``
says what each kind of job does. The server imports ``process`` only.
"""
