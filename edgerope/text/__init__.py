"""Text: tokenizers (SentencePiece, Hugging Face `tokenizers`, vocabularies carried in GGUF)
and chat templates (sandboxed rendering of a conversation into a prompt)."""
