"""Reading and showing results: the result-file schema (`results`), the comparison over seeds
behind `udaseg report` (`compare`), its figures (`plots`, needs matplotlib) and the colour
coding of label and entropy maps (`visualize`).

Nothing is imported here, so reading results never needs matplotlib or Lightning.
"""
