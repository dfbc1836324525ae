//! The committed Qwen3 tokenizer fixture encodes known strings to known ids.

use semflow::inference::prompts::{EOS_TOKEN_ID, IM_START_TOKEN_ID, NO_TOKEN_ID, YES_TOKEN_ID};
use semflow::inference::tokenize::QwenTokenizer;

fn fixture(name: &str) -> QwenTokenizer {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/semflow-inference/tokenizer")
        .join(name);
    QwenTokenizer::from_file(&path).unwrap()
}

#[test]
fn known_ids() {
    for name in ["qwen3-tokenizer.json", "qwen3-embedding-tokenizer.json"] {
        let tok = fixture(name);
        assert_eq!(
            tok.encode("Hello world<|endoftext|>").unwrap(),
            vec![9707, 1879, 151643]
        );
        assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![IM_START_TOKEN_ID]);
        assert_eq!(tok.encode("yes").unwrap(), vec![YES_TOKEN_ID]);
        assert_eq!(tok.encode("no").unwrap(), vec![NO_TOKEN_ID]);
        assert_eq!(EOS_TOKEN_ID, 151643);
        assert_eq!(tok.decode(&[9707, 1879]).unwrap(), "Hello world");
    }
}

/// The embedding tokenizer's post-processor would append <|endoftext|>; semflow encodes without
/// it and appends the token itself, so both tokenizers give the same embedding input.
#[test]
fn eos_appended_exactly_once_with_either_tokenizer() {
    use semflow::inference::tokenize::Truncation;
    for name in ["qwen3-tokenizer.json", "qwen3-embedding-tokenizer.json"] {
        let tok = fixture(name);
        let ids = QwenTokenizer::finish_embedding_ids(
            tok.encode("Hello world").unwrap(),
            512,
            Truncation::End,
        )
        .unwrap();
        assert_eq!(ids, vec![9707, 1879, EOS_TOKEN_ID], "{name}");
    }
}
