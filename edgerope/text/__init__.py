"""Text: tokenizers and chat. Modules, in reading order:

    tokenizer_base  the `Tokenizer` interface, streaming detokenization, special-token splitting
    spm_tokenizer   SentencePiece models          spm_proto  SentencePiece ModelProto bytes
    bpe_tokenizer   byte-level BPE (tokenizers)   gguf_vocab tokenizers from GGUF metadata
    tokenizer       load_tokenizer (Hugging Face directories), tokenizer_from_gguf; re-exports
    template        chat templates: sandboxed Jinja rendering, built-ins, template choice
    conversation    `Chat`: a conversation keeping its KV cache between turns

Imports only edgerope.engine and below (never edgerope.io or edgerope.apps)."""
