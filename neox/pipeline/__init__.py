"""The pipeline level. The stage contract every stage uses (`layout`, `stage`, `atomic`, `configfile`: they
import nothing of neox but `neox.errors`), and what composes the stages (`check`, `retrain`, `summary`,
`cluster`, `commands`)."""
