//! The exact Qwen3-Embedding and Qwen3-Reranker input formats (arXiv 2506.05176 and the
//! official model cards). Everything that turns user text into model text lives here, so a
//! format change is one diff.

/// `<|endoftext|>`: the token whose final hidden state is the embedding.
pub const EOS_TOKEN_ID: u32 = 151643;
/// Tokens the embedding model reads for `ids`: `<|endoftext|>` is appended unless already
/// last (before any truncation).
pub fn embedding_length(ids: &[u32]) -> usize {
    ids.len() + usize::from(ids.last() != Some(&EOS_TOKEN_ID))
}

/// `<|im_start|>`.
pub const IM_START_TOKEN_ID: u32 = 151644;
/// `yes` in the Qwen3 vocabulary: the reranker's positive label.
pub const YES_TOKEN_ID: u32 = 9693;
/// `no` in the Qwen3 vocabulary: the reranker's negative label.
pub const NO_TOKEN_ID: u32 = 2152;

/// Instruction used by `rerank()` when none is given (the Qwen3-Reranker model card's).
pub const DEFAULT_RERANK_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Everything before the instruction in the reranker prompt.
pub const RERANK_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
/// Everything after the document in the reranker prompt.
pub const RERANK_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

/// Text to embed: queries carry their instruction, documents (no or empty instruction) do not.
///
/// ```
/// use semflow_inference::prompts::embedding_text;
/// assert_eq!(embedding_text("what is graphene", Some("Find passages")),
///            "Instruct: Find passages\nQuery:what is graphene");
/// assert_eq!(embedding_text("Graphene is carbon.", None), "Graphene is carbon.");
/// ```
pub fn embedding_text(text: &str, instruction: Option<&str>) -> String {
    match instruction {
        Some(instr) if !instr.is_empty() => format!("Instruct: {instr}\nQuery:{text}"),
        _ => text.to_string(),
    }
}

/// Text to embed when the second argument may name a prompt: an instruction exactly equal to
/// one of the model's prompt names (`named`, e.g. `query`) is that prompt, prepended verbatim
/// (sentence-transformers' rule); anything else is an instruction for [`embedding_text`].
///
/// ```
/// use std::collections::BTreeMap;
/// use semflow_inference::prompts::format_embedding;
/// let named = BTreeMap::from([("query".to_string(), "Instruct: Find\nQuery:".to_string())]);
/// assert_eq!(format_embedding("x", Some("query"), &named), "Instruct: Find\nQuery:x");
/// assert_eq!(format_embedding("x", Some("Find"), &named), "Instruct: Find\nQuery:x");
/// ```
pub fn format_embedding(
    text: &str,
    instruction: Option<&str>,
    named: &std::collections::BTreeMap<String, String>,
) -> String {
    match instruction.and_then(|i| named.get(i)) {
        Some(prefix) => format!("{prefix}{text}"),
        None => embedding_text(text, instruction),
    }
}

/// The variable middle of the reranker prompt (between [`RERANK_PREFIX`] and
/// [`RERANK_SUFFIX`]); this is the part truncated when a pair is too long.
pub fn rerank_body(query: &str, document: &str, instruction: Option<&str>) -> String {
    let instr = match instruction {
        Some(i) if !i.is_empty() => i,
        _ => DEFAULT_RERANK_INSTRUCTION,
    };
    format!("<Instruct>: {instr}\n<Query>: {query}\n<Document>: {document}")
}

/// The reranker prompt split where servers that score a text pair (vLLM's `/score` and
/// `/rerank` with Qwen3-Reranker) join their two texts: the query side (prefix, instruction,
/// query) and the document side (document, suffix). Their concatenation is the full prompt,
/// and the cut sits where the tokenizer splits anyway (before `<Document>`), so the token ids
/// equal the local backend's.
pub fn rerank_pair_texts(
    query: &str,
    document: &str,
    instruction: Option<&str>,
) -> (String, String) {
    let instr = match instruction {
        Some(i) if !i.is_empty() => i,
        _ => DEFAULT_RERANK_INSTRUCTION,
    };
    (
        format!("{RERANK_PREFIX}<Instruct>: {instr}\n<Query>: {query}\n"),
        format!("<Document>: {document}{RERANK_SUFFIX}"),
    )
}

/// P(yes) from the last-position logits of "yes" and "no": a two-way softmax.
pub fn p_yes(yes_logit: f32, no_logit: f32) -> f32 {
    // Numerically stable form of e^y / (e^y + e^n).
    let d = (no_logit - yes_logit) as f64;
    (1.0 / (1.0 + d.exp())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_format_matches_paper() {
        assert_eq!(
            embedding_text("what is graphene", Some("Find it")),
            "Instruct: Find it\nQuery:what is graphene"
        );
        assert_eq!(embedding_text("doc", None), "doc");
        assert_eq!(embedding_text("doc", Some("")), "doc");
    }

    #[test]
    fn rerank_prompt_is_exact() {
        let full = format!(
            "{RERANK_PREFIX}{}{RERANK_SUFFIX}",
            rerank_body("q", "d", None)
        );
        assert_eq!(
            full,
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: q\n<Document>: d<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }

    #[test]
    fn pair_texts_join_into_the_exact_prompt() {
        for instr in [None, Some("Find code")] {
            let (a, b) = rerank_pair_texts("what is x", "x is y\n", instr);
            assert_eq!(
                format!("{a}{b}"),
                format!(
                    "{RERANK_PREFIX}{}{RERANK_SUFFIX}",
                    rerank_body("what is x", "x is y\n", instr)
                )
            );
        }
    }

    #[test]
    fn p_yes_is_two_way_softmax() {
        assert!((p_yes(0.0, 0.0) - 0.5).abs() < 1e-7);
        let (y, n) = (2.0f32, -1.0f32);
        let expect = y.exp() / (y.exp() + n.exp());
        assert!((p_yes(y, n) - expect).abs() < 1e-6);
        // Extreme logits saturate instead of overflowing to NaN.
        assert_eq!(p_yes(1000.0, -1000.0), 1.0);
        assert_eq!(p_yes(-1000.0, 1000.0), 0.0);
    }
}
