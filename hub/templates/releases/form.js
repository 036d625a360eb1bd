// The release form's progressive part: each output block shows only the fields of its kind
// (a query or a model fit), and "Add another output" adds a blank block in place. Without
// it, both halves show and the button asks the hub for a form with one more block.
(function () {
  "use strict";
  var form = document.getElementById("release-form");
  if (!form) { return; }
  var outputs = document.getElementById("outputs");

  function showKind(block) {
    var chosen = block.querySelector("input[data-kind-choice]:checked");
    var kind = chosen ? chosen.value : "query";
    block.querySelectorAll("[data-kind]").forEach(function (part) {
      part.hidden = part.getAttribute("data-kind") !== kind;
    });
  }

  function wire(block) {
    block.querySelectorAll("input[data-kind-choice]").forEach(function (radio) {
      radio.addEventListener("change", function () { showKind(block); });
    });
    showKind(block);
  }

  function renumber() {
    outputs.querySelectorAll("[data-output]").forEach(function (block, i) {
      var number = block.querySelector("[data-number]");
      if (number) { number.textContent = String(i + 1); }
    });
  }

  outputs.querySelectorAll("[data-output]").forEach(wire);

  var add = form.querySelector("[data-add-output]");
  if (!add) { return; }
  var max = parseInt(add.getAttribute("data-max"), 10) || 20;
  add.addEventListener("click", function (event) {
    var blocks = outputs.querySelectorAll("[data-output]");
    if (blocks.length === 0) { return; }  // let the hub make the form
    event.preventDefault();
    var last = blocks[blocks.length - 1];
    var next = 0;
    blocks.forEach(function (b) {
      next = Math.max(next, parseInt(b.getAttribute("data-output"), 10) || 0);
    });
    next += 1;
    var fresh = last.cloneNode(true);
    var from = "outputs-" + last.getAttribute("data-output") + "-";
    var to = "outputs-" + next + "-";
    fresh.setAttribute("data-output", String(next));
    fresh.querySelectorAll("[data-testid=output-problem]").forEach(function (p) { p.remove(); });
    fresh.querySelectorAll("[id], [name], [for]").forEach(function (el) {
      ["id", "name", "for"].forEach(function (attr) {
        var value = el.getAttribute(attr);
        if (value && value.indexOf(from) === 0) {
          el.setAttribute(attr, to + value.slice(from.length));
        }
      });
    });
    fresh.querySelectorAll("input, textarea, select").forEach(function (el) {
      if (el.type === "radio") {
        el.checked = el.value === "query";
      } else if (el.tagName === "SELECT") {
        el.selectedIndex = 0;
      } else {
        el.value = "";
      }
    });
    outputs.appendChild(fresh);
    wire(fresh);
    renumber();
    if (outputs.querySelectorAll("[data-output]").length >= max) { add.hidden = true; }
    var purpose = fresh.querySelector("input[id$='-purpose']");
    if (purpose) { purpose.focus(); }
  });
}());
