"""Corrections of billing after the fact (issue 20): a void or amend of one usage event, each a new
entry tied to the event it corrects, never an edit."""
