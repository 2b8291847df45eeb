// The ipywidgets HTML manager typesets widget labels with the MathJax 2 call MathJax.Hub.Queue(...);
// the book ships MathJax 3, which has no Hub. This forwards such calls to MathJax 3's typesetPromise.
// Loaded with `defer` after MathJax, so window.MathJax is already the MathJax 3 object here.
(function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {
      Queue: function (job) {
        var el = Array.isArray(job) ? job[2] : null;
        if (el && window.MathJax.typesetPromise) { window.MathJax.typesetPromise([el]); }
      },
    };
  }
})();
