// DTXCoordinator: the engine.
