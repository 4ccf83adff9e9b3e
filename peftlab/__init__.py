"""peftlab: measure how far PEFT and full fine-tuning move a model, and what each deployment costs."""

__version__ = "0.1.0"
