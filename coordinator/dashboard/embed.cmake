# Writes a C++ source defining fedtail::coordinator::dashboard_page_html() (coordinator/http_dashboard.h)
# as the text of the dashboard page, so that the binaries serve it without any file at run time.
#   cmake -DINPUT=coordinator/dashboard/index.html -DOUTPUT=<build>/dashboard_page.cc -P embed.cmake
# The output is rewritten only when its text changes.
if(NOT INPUT OR NOT OUTPUT)
  message(FATAL_ERROR "embed.cmake: pass -DINPUT=<page> -DOUTPUT=<source>")
endif()
file(READ "${INPUT}" page)
set(delimiter "fedtail_page")
string(FIND "${page}" ")${delimiter}\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "embed.cmake: ${INPUT} contains the raw-string delimiter )${delimiter}\"")
endif()
set(text "// Generated from ${INPUT} by coordinator/dashboard/embed.cmake: do not edit.
#include \"coordinator/http_dashboard.h\"

namespace fedtail::coordinator {

std::string_view dashboard_page_html() {
  static constexpr char kPage[] = R\"${delimiter}(${page})${delimiter}\";
  return std::string_view(kPage, sizeof(kPage) - 1);
}

}  // namespace fedtail::coordinator
")
file(WRITE "${OUTPUT}.tmp" "${text}")
configure_file("${OUTPUT}.tmp" "${OUTPUT}" COPYONLY)
file(REMOVE "${OUTPUT}.tmp")
