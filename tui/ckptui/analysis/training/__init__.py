"""Training state: which parameter each optimizer entry belongs to (`optim_map`,
`optim_align`), the resume card (`resume`), what torch.load(weights_only=True) would refuse
(`weights_only`), gathered once per checkpoint (`facts`).
"""
