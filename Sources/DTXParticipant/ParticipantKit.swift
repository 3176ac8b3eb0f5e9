// DTXParticipant: the participant kit.
