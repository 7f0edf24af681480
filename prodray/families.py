"""Every training kind's `Training` class, by the config's `kind` (config.TRAIN_CONFIGS has the
config classes). A new model family adds one line here and one there."""

from prodray.enhancer.training import AdversarialTraining, PsnrTraining
from prodray.gan.training import GanTraining
from prodray.recolour.training import RecolourTraining
from prodray.repair.training import RepairTraining

TRAININGS = {"enhancer": PsnrTraining, "enhancer-adversarial": AdversarialTraining, "gan": GanTraining,
             "repair": RepairTraining, "recolour": RecolourTraining}
