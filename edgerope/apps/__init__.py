"""What the CLI runs, each callable from Python: generation timing (bench), the chat terminal
loop, model information, perplexity. Apps use the layers below (io, text, engine) and print;
nothing below imports an app."""
